//! The `meridian` binary: run a region, simulate a deployment, manage certificates, talk to the API.

fn main() {
    eprintln!("meridian: not built yet; see README.md for what is available");
    std::process::exit(2);
}
