fn main() -> std::process::ExitCode {
    buildd::cli::main()
}
