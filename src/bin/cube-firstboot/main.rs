//! `cube-firstboot`: runs on the target at first boot (being written).

fn main() {
    eprintln!("cube-firstboot: not written yet");
    std::process::exit(2);
}
