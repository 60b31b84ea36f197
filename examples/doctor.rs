//! Print the `netdrift doctor` report of this machine (run as root):
//! `cargo run --example doctor`.

fn main() {
    let start = std::time::Instant::now();
    let report = netdrift::doctor::run();
    print!("{}", netdrift::doctor::render_text(&report, false));
    eprintln!("(doctor took {:?})", start.elapsed());
}
