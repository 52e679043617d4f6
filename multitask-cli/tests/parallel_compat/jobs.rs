//! Slots, order with and without `-k`, exit status and `--halt`, through
//! both.

use crate::{both, same, same_lines};

#[test]
fn order_with_k_and_without() {
    // The first job is the slowest: -k keeps it first in both.
    let cmd = "sleep 0.$(( (3 - {#}) * 3 )); echo {}";
    same(&["-j", "3", "-k", cmd, ":::", "a", "b", "c"]);
    same_lines(&["-j", "3", cmd, ":::", "a", "b", "c"]);
    same_lines(&["-j", "2", "echo", ":::", "1", "2", "3", "4", "5", "6"]);
}

#[test]
fn job_counts_agree() {
    // The same jobs run whatever -j says; {%} never exceeds the slots.
    for j in ["0", "200%", "+1", "-1", "1", "50%"] {
        same_lines(&["-j", j, "echo", ":::", "1", "2", "3", "4", "5"]);
    }
    let Some((_, ours)) = both(
        &["-j", "2", "sleep 0.1; echo {%}", ":::", "1", "2", "3", "4"],
        None,
    ) else {
        return;
    };
    assert!(
        ours.stdout.lines().all(|l| l == "1" || l == "2"),
        "{}",
        ours.stdout
    );
}

#[test]
fn exit_status_and_halt_agree() {
    for args in [
        &["-k", "exit {}", ":::", "0", "1", "0", "7", "2"][..],
        &["-k", "true", ":::", "a", "b"],
        &[
            "-j1",
            "-k",
            "--halt",
            "soon,fail=1",
            "echo {}; exit {}",
            ":::",
            "0",
            "3",
            "0",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "now,fail=1",
            "echo {}; exit {}",
            ":::",
            "0",
            "3",
            "0",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "soon,fail=2",
            "echo {}; exit {}",
            ":::",
            "0",
            "1",
            "2",
            "0",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "soon,fail=2",
            "exit {}",
            ":::",
            "5",
            "7",
            "0",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "now,fail=50%",
            "echo {}; exit {}",
            ":::",
            "1",
            "2",
            "0",
            "0",
            "0",
            "0",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "soon,fail=30%",
            "echo {}; exit {}",
            ":::",
            "0",
            "0",
            "1",
            "0",
            "2",
            "0",
            "0",
            "0",
            "0",
            "0",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "soon,success=50%",
            "echo {}; exit {}",
            ":::",
            "1",
            "1",
            "0",
            "0",
            "0",
            "0",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "now,success=1",
            "echo {}; exit {}",
            ":::",
            "3",
            "0",
            "4",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "soon,done=2",
            "echo {}; exit {}",
            ":::",
            "3",
            "0",
            "4",
        ],
        &[
            "-j1",
            "-k",
            "--halt",
            "2",
            "echo {}; exit {}",
            ":::",
            "0",
            "3",
            "0",
        ],
    ] {
        same(args);
    }
}
