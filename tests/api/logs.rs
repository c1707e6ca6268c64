//! What a node writes to its logs when they go to a file or a pipe: no terminal colour codes, and with
//! `log.format = "json"` one JSON object per line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs the real binary with its stderr on a pipe until it says it is listening; answers those lines.
fn first_lines(format: &str) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", "0"])
        .env("HERALD__LOG__FORMAT", format)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the herald binary runs");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("log lines are UTF-8");
        let listening = line.contains("listening on");
        lines.push(line);
        if listening || lines.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("listening on")),
        "no start-up line: {lines:?}"
    );
    lines
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    for line in first_lines("text") {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    for line in first_lines("json") {
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        for key in ["timestamp", "level", "target"] {
            assert!(value.get(key).is_some(), "{key} missing in {line}");
        }
        assert!(value["fields"]["message"].is_string(), "no message in {line}");
    }
}

#[test]
fn an_unknown_log_format_is_refused_with_the_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env("HERALD__LOG__FORMAT", "xml")
        .output()
        .expect("the herald binary runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("log.format = xml: use text or json"), "{text}");
}

/// A node whose log pipe broke (a log shipper that went away) still stops on SIGTERM: a log line that
/// cannot be written is dropped, where reporting it used to panic the task that handles the signal.
#[test]
fn a_broken_log_pipe_does_not_stop_the_node_from_stopping() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the herald binary runs");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.expect("log lines are UTF-8").contains("listening on") {
            break;
        }
    }
    drop(lines); // the pipe's reading end closes: every later log write fails
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node ignored SIGTERM once its log pipe broke");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}
