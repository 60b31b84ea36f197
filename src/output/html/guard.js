// Runs first: records script errors, blocked fetches and any alert() on the
// root element, where a test (or a reader with dev tools) can see them.
(function () {
  'use strict';
  var root = document.documentElement;
  window.onerror = function (msg) {
    root.setAttribute('data-nd-error', String(msg));
  };
  window.addEventListener('securitypolicyviolation', function (e) {
    root.setAttribute('data-nd-csp', String(e.violatedDirective) + ' ' + String(e.blockedURI));
  });
  var marker = function () {
    root.setAttribute('data-nd-alert', '1');
  };
  window.alert = marker;
  window.confirm = marker;
  window.prompt = marker;
})();
