//! Start-up refuses settings it does not know (a typo would otherwise be ignored silently), naming the
//! key, where it came from and the closest known key. Runs the real binary.

use std::process::Command;

fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the herald binary runs");
    assert_eq!(out.status.code(), Some(1), "start-up must fail: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_environment_variable_is_refused_with_the_closest_key() {
    let stderr = refused(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--port", "0"])
            .env("HERALD__HISTORY__MAX_LENGHT", "5"),
    );
    for part in [
        "unknown setting history.max_lenght",
        "the environment variable HERALD__HISTORY__MAX_LENGHT",
        "did you mean history.max_len?",
    ] {
        assert!(stderr.contains(part), "`{part}` missing from: {stderr}");
    }
}

#[test]
fn unknown_keys_and_sections_in_a_file_are_refused_with_the_file_and_the_closest_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (toml, key, hint) in [
        (
            "[histroy]\nmax_len = 5\n",
            "histroy.max_len",
            "did you mean history.max_len?",
        ),
        (
            "[history]\nmax_lenght = 5\n",
            "history.max_lenght",
            "did you mean history.max_len?",
        ),
        (
            "[redis]\nsentinel_pasword = \"x\"\n",
            "redis.sentinel_pasword",
            "did you mean redis.sentinel_password?",
        ),
        // A key that did nothing (a copy of server.lean_streams) is gone, and says where it went.
        (
            "[redis]\nlean_streams = true\n",
            "redis.lean_streams",
            "it is server.lean_streams now",
        ),
    ] {
        std::fs::write(dir.path().join("default.toml"), toml).expect("write config");
        let stderr = refused(
            Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["--port", "0", "--config"])
                .arg(dir.path()),
        );
        // The config crate may show the path relative to the working directory: look for its end.
        let file = std::path::Path::new(dir.path().file_name().expect("a name"))
            .join("default.toml")
            .display()
            .to_string();
        for part in [format!("unknown setting {key}"), file, hint.to_string()] {
            assert!(stderr.contains(&part), "`{part}` missing from: {stderr}");
        }
    }
}

#[test]
fn a_key_far_from_every_setting_is_refused_without_a_guess() {
    let stderr = refused(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--port", "0"])
            .env("HERALD__SERVER__ZZZZZZZZZZZZ", "1"),
    );
    assert!(stderr.contains("unknown setting server.zzzzzzzzzzzz"), "{stderr}");
    assert!(!stderr.contains("did you mean"), "{stderr}");
}
