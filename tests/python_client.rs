//! A client in another language talks to the example echo server: CPython's
//! `socket` module drives `examples/tcp_echo.rs --listen` and checks every
//! byte that comes back. Skipped without python3 (see `common::client`).

mod common;

use common::{Server, client, example, first_line_port};
use std::process::{Command, Stdio};

const CLIENT: &str = r#"
import socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
total = 0
for k, size in enumerate([1, 7, 1000, 65536, 300000, 1 << 20]):
    msg = bytes((i * 31 + k) % 256 for i in range(size))
    s.sendall(msg)
    back = bytearray()
    while len(back) < size:
        chunk = s.recv(size - len(back))
        if not chunk:
            sys.exit("server closed early after %d of %d bytes" % (len(back), size))
        back += chunk
    if bytes(back) != msg:
        sys.exit("echo of %d bytes differs" % size)
    total += size
s.shutdown(socket.SHUT_WR)
if s.recv(1) != b"":
    sys.exit("data after the echo")
s.close()
print("python client: %d bytes echoed" % total)
"#;

#[test]
fn a_python_client_gets_every_byte_back_from_the_example_echo_server() {
    let Some(python) = client("python3", "python3") else { return };
    let mut child = Command::new(example("tcp_echo"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example server");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let port = first_line_port(stdout);
    let out = Command::new(python).arg("-c").arg(CLIENT).arg(port.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1415120 bytes echoed"), "unexpected output: {stdout}");
    drop(server);
}
