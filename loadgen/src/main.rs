//! `loadgen`: drives the switch over the wire as participants do. See [`loadgen::cli`].

fn main() {
    std::process::exit(loadgen::cli::main_with(std::env::args_os()));
}
