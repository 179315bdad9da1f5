fn main() {
    cdiphase_cli_placeholder();
}
fn cdiphase_cli_placeholder() {}
