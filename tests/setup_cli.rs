//! The commands that set lattice-mount up on a machine and need no daemon: `service
//! install|uninstall` (with systemctl left out), `completions` and `man`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::ok;

/// The CLI with HOME `home` and no XDG_CONFIG_HOME, so user units go to
/// `home/.config/systemd/user`.
fn in_home(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lattice-mount"));
    c.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("LATTICE_HOME")
        .env_remove("RUST_LOG");
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn service_install_writes_a_user_unit_running_up_and_uninstall_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let unit = tmp
        .path()
        .join(".config/systemd/user/lattice-mount.service");
    let bin = Path::new(env!("CARGO_BIN_EXE_lattice-mount"))
        .canonicalize()
        .unwrap();

    let bad = in_home(tmp.path())
        .args(["service", "install", "--no-enable", "--", "--frobnicate"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert_eq!(
        stderr(&bad),
        "lattice-mount: invalid options for `up` in the service: unexpected argument \
         '--frobnicate' found\n"
    );
    assert!(!unit.exists(), "a refused install must write nothing");

    let installed = ok(in_home(tmp.path())
        .arg("--data-dir")
        .arg(&data)
        .args([
            "service",
            "install",
            "--no-enable",
            "--",
            "--relay",
            "disabled",
        ])
        .output()
        .unwrap());
    assert_eq!(
        installed,
        format!(
            "wrote {}\nenable and start it with: systemctl --user daemon-reload && \
             systemctl --user enable --now lattice-mount.service\n",
            unit.display()
        )
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    let exec = format!(
        "\nExecStart={} --data-dir {} up --relay disabled\n",
        bin.display(),
        data.display()
    );
    assert!(text.contains(&exec), "{text}");
    assert!(text.contains("\nWantedBy=default.target\n"), "{text}");
    assert!(!data.exists(), "installing must not create the data dir");

    let removed = ok(in_home(tmp.path())
        .args(["service", "uninstall", "--no-disable"])
        .output()
        .unwrap());
    assert_eq!(removed, format!("removed {}\n", unit.display()));
    assert!(!unit.exists());
    let again = in_home(tmp.path())
        .args(["service", "uninstall", "--no-disable"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again),
        format!(
            "lattice-mount: no lattice-mount service is installed ({} does not exist)\n",
            unit.display()
        )
    );
}

#[test]
fn bash_completions_name_every_subcommand_and_parse_without_a_home() {
    let tmp = tempfile::tempdir().unwrap();
    let out = in_home(tmp.path())
        .env_remove("HOME")
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = ok(out);
    for sub in ["up", "join", "invite", "service", "completions", "man"] {
        assert!(
            script.contains(&format!("lattice__mount__subcmd__{sub}")),
            "{sub} missing"
        );
    }
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(bash.wait().unwrap().success(), "bash -n rejects the script");
}

#[test]
fn the_man_pages_document_the_commands_and_their_options() {
    let tmp = tempfile::tempdir().unwrap();
    let man = |args: &[&str]| in_home(tmp.path()).arg("man").args(args).output().unwrap();
    let page = ok(man(&[]));
    assert!(page.contains("\n.TH lattice-mount 1 "), "no title: {page}");
    for sub in ["up", "create", "join", "service", "completions", "man"] {
        assert!(
            page.contains(&format!("\n.TP\nlattice\\-mount\\-{sub}(1)\n")),
            "{sub} missing from the page: {page}"
        );
    }
    let up = ok(man(&["up"]));
    assert!(up.contains("\n.TH lattice-mount-up 1 "), "{up}");
    assert!(up.contains("\\-\\-allow\\-other"), "{up}");
    let install = ok(man(&["service", "install"]));
    assert!(install.contains("\\-\\-no\\-enable"), "{install}");
    let unknown = man(&["nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        stderr(&unknown),
        "lattice-mount: no command `nope` (see `lattice-mount --help`)\n"
    );
}
