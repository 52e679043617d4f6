//! Input sources, replacement strings, quoting and argument groups,
//! through both.

use crate::{both, both_in, same, same_with, scratch, Ran};

#[test]
fn input_sources_agree() {
    same(&["-k", "echo", ":::", "a", "b", ":::", "1", "2"]);
    same(&["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2"]);
    same(&[
        "-k",
        "echo",
        "{3}{2}{1}",
        ":::",
        "a",
        "b",
        ":::",
        "1",
        "2",
        ":::",
        "x",
    ]);
    same(&["-k", "echo", ":::"]);
    let dir = scratch("files");
    std::fs::write(dir.join("f"), "1\n2\n").unwrap();
    std::fs::write(dir.join("g"), "x y\nz\n").unwrap();
    std::fs::write(dir.join("nul"), "a b\0c\0").unwrap();
    std::fs::write(dir.join("csv"), "a,b\nc,d\n").unwrap();
    std::fs::write(dir.join("tsv"), "a\tb\nc\td\n").unwrap();
    for args in [
        &["-k", "echo", "::::", "f"][..],
        &["-k", "echo", "::::", "f", "g"],
        &["-k", "echo", ":::", "a", "b", "::::+", "f"],
        &["-k", "-a", "f", "-a", "g", "echo"],
        &["-k", "-a", "g", "echo", "[{}]"],
        &["-k", "-0", "echo", "x{}x", "::::", "nul"],
        &["-k", "--colsep", ",", "echo", "{2}{1}", "::::", "csv"],
        &["-k", "--colsep", "\\t", "echo", "{2}-{1}", "::::", "tsv"],
        &["-k", "--colsep", ",", "echo", "::::", "csv"],
        &["-k", "--dry-run", "echo", "::::", "g"],
    ] {
        let (theirs, ours) = both_in(args, None, &dir).unwrap_or_default();
        assert_eq!(
            ours,
            Ran {
                stderr: ours.stderr.clone(),
                ..theirs
            },
            "{args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    same_with(&["-k", "echo", "<{}>"], Some("x\ny y\n\nz\n"));
    same_with(&["-k", "-0", "echo", "<{}>"], Some("x\ny\0z\0"));
    same_with(&["-k", "echo", "{}", "::::", "-"], Some("1\n2\n"));
}

#[test]
fn replacement_strings_agree() {
    let paths = [
        ":::",
        "dir/file.tar.gz",
        "plain",
        ".bashrc",
        "dir/",
        "/top",
        "a.b.c/x",
    ];
    let mut args = vec!["-k", "echo", "{}|{.}|{/}|{//}|{/.}|{#}"];
    args.extend_from_slice(&paths);
    same(&args);
    same(&[
        "-k", "echo", "{2}", "{1}", "{2/.}", "{2//}", "{1.}", "{2/}", ":::", "a.x", "b", ":::",
        "d/1.t",
    ]);
    same(&["-k", "-I", "XX", "echo", "XX.XX", "{.}", ":::", "a.b"]);
    same(&["-k", "--replace", "@", "echo", "<@>", ":::", "a", "b"]);
    same(&["-k", "echo", "{#}", ":::", "x", "y"]);
    same(&["-k", "echo", "hi", ":::", "x", "y"]);
    same(&["-j", "1", "-k", "echo", "{%}", ":::", "x", "y"]);
}

#[test]
fn quoting_and_dry_run_agree() {
    same(&[
        "--dry-run",
        "-k",
        "echo",
        ":::",
        "a b",
        "it's",
        "",
        "x$y",
        "é",
        "'q'",
        "a/b-c.d+e",
        "*",
    ]);
    same(&["-q", "--dry-run", "echo", "a b{}", ";", ":::", "x"]);
    same(&["--dry-run", "echo", "a b{}", ";", ":::", "x"]);
    same(&[
        "-q", "-k", "printf", "%s|%s\\n", "{}", "a b", ":::", "x y", "z",
    ]);
    same(&[
        "-k",
        "echo",
        ":::",
        "a b",
        "$(echo no)",
        "`echo no`",
        ";",
        "&&",
        "\\",
        "\"",
        "'",
    ]);
    same(&[
        "--dry-run",
        "-k",
        "-X",
        "-j",
        "2",
        "echo",
        ":::",
        "1",
        "2",
        "3",
    ]);
}

#[test]
fn argument_groups_agree() {
    for args in [
        &[
            "-k", "-n", "2", "echo", "{}", ":", "{1}", "-", "{2}", ":::", "a", "b", "c",
        ][..],
        &[
            "-k", "-N", "2", "echo", "{}", ":", "{1}", "-", "{2}", ":::", "a", "b", "c",
        ],
        &["-k", "-n", "2", "echo", ":::", "a", "b", "c"],
        &["-k", "-N", "0", "echo", "hi", ":::", "a", "b"],
        &[
            "-k",
            "-j",
            "1",
            "-X",
            "echo",
            "pre{}post",
            ":::",
            "a",
            "b",
            "c",
        ],
        &[
            "-k",
            "-j",
            "1",
            "-m",
            "echo",
            "pre{}post",
            ":::",
            "a",
            "b",
            "c",
        ],
        &[
            "-k", "-j", "4", "-X", "echo", ":::", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10",
        ],
        &[
            "-k", "-j", "3", "-m", "echo", ":::", "1", "2", "3", "4", "5", "6", "7",
        ],
    ] {
        same(args);
    }
    // Packing to the command line limit: the same arguments, each once,
    // in order (multitask packs more per line, see the README).
    let numbers: String = (1..=40_000).map(|i| format!("{i}\n")).collect();
    let Some((theirs, ours)) = both(&["-k", "-j", "1", "-X", "echo"], Some(&numbers)) else {
        return;
    };
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(words(&ours.stdout), words(&theirs.stdout));
    assert_eq!(ours.code, theirs.code);
    assert!(ours.stdout.lines().all(|l| l.len() < 128 * 1024));
}
