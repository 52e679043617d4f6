//! Unit tests of `multitask run`'s parts: splitting the command line,
//! replacement strings and quoting, packing, blocks, option values, exit
//! statuses. The whole command is tested against the binary (and GNU
//! parallel) in `tests/`.

use super::inputs::{self, Blocks, Colsep, Packer, Record, Source};
use super::options::{parse_size, Halt, HaltOn, Jobs, Limit, Timeout};
use super::template::{quote, without_ext, Fill, Template};
use super::*;

fn words(s: &str) -> Vec<String> {
    s.split(' ').map(String::from).collect()
}

fn template(cmd: &str) -> Template {
    Template::parse(&words(cmd), "{}", false, false, true).unwrap()
}

fn one(t: &Template, arg: &str, seq: u64) -> String {
    let records = vec![vec![arg.to_string()]];
    t.expand(Fill {
        records: &records,
        seq,
        slot: 1,
    })
}

#[test]
fn placeholders_expand() {
    let t = template("cp {} {//}/{/.}.bak # {.} {/} {#}");
    assert_eq!(
        one(&t, "src/a.b/file.tar.gz", 3),
        "cp src/a.b/file.tar.gz src/a.b/file.tar.bak # src/a.b/file.tar file.tar.gz 3"
    );
    assert_eq!(one(&template("echo {//}"), "plain", 1), "echo .");
    assert_eq!(one(&template("echo {//}"), "/top", 1), "echo /");
    assert_eq!(without_ext("a.d/b"), "a.d/b");
    assert_eq!(without_ext(".bashrc"), "");
}

#[test]
fn positional_replacements_take_modifiers() {
    let t = template("echo {2} {1} {2/.} {2//} {3} {%}");
    let records: Vec<Record> = vec![vec!["a".into(), "x/1.t".into()]];
    let line = t.expand(Fill {
        records: &records,
        seq: 1,
        slot: 2,
    });
    assert_eq!(line, "echo x/1.t a 1 x  2");
}

#[test]
fn no_placeholder_appends_the_argument() {
    assert_eq!(one(&template("echo hi"), "x", 1), "echo hi x");
    assert_eq!(one(&template("echo {#}"), "x", 2), "echo 2");
    let t = Template::parse(&words("echo XX.XX {.}"), "XX", false, false, true).unwrap();
    assert_eq!(one(&t, "a.b", 1), "echo a.b.a.b a");
}

#[test]
fn arguments_are_quoted_as_gnu_parallel_quotes_them() {
    let t = template("echo {}");
    assert_eq!(one(&t, "a b", 1), "echo 'a b'");
    assert_eq!(one(&t, "it's", 1), r#"echo 'it'"'"'s'"#);
    assert_eq!(one(&t, "", 1), "echo ''");
    assert_eq!(one(&t, "$(rm -rf x)", 1), "echo '$(rm -rf x)'");
    assert_eq!(quote("a/b-c.d+e"), "a/b-c.d+e");
    assert_eq!(quote("'x'"), r#""'"'x'"'""#);
    let q = Template::parse(&words("echo a{}b ;"), "{}", true, false, true).unwrap();
    assert_eq!(one(&q, " x", 1), "echo 'a xb' ';'");
}

#[test]
fn several_records_and_context_replace() {
    let records: Vec<Record> = ["a", "b", "c"]
        .iter()
        .map(|s| vec![s.to_string()])
        .collect();
    let fill = Fill {
        records: &records,
        seq: 1,
        slot: 1,
    };
    let x = Template::parse(&words("echo pre{}post"), "{}", false, true, true).unwrap();
    assert_eq!(x.expand(fill), "echo preapost prebpost precpost");
    assert_eq!(template("echo pre{}post").expand(fill), "echo prea b cpost");
    assert_eq!(template("echo {1}-{3}").expand(fill), "echo a-c");
}

#[test]
fn perl_expressions_are_refused() {
    assert!(Template::parse(&words("echo {=s/a/b/=}"), "{}", false, false, true).is_err());
}

#[test]
fn the_command_splits_into_sources() {
    let (cmd, groups) =
        inputs::split_command(&words("echo {} ::: a b :::+ 1 2 :::: f"), &[]).unwrap();
    assert_eq!(cmd, ["echo", "{}"]);
    assert_eq!(groups.len(), 3);
    assert_eq!(
        groups[0].source,
        Source::Listed(vec!["a".into(), "b".into()])
    );
    assert!(groups[1].linked && !groups[2].linked);
    assert_eq!(groups[2].source, Source::File("f".into()));
    let (_, stdin) = inputs::split_command(&words("wc -l"), &[]).unwrap();
    assert_eq!(stdin[0].source, Source::Stdin);
    assert!(inputs::split_command(&words("::: a"), &[]).is_err());
    assert!(inputs::split_command(&words("echo :::+ a"), &[]).is_err());
}

#[test]
fn sources_combine_and_link() {
    let (_, groups) = inputs::split_command(&words("e ::: a b ::: 1 2 3 :::+ x y"), &[]).unwrap();
    let reading = inputs::Reading {
        terminator: b'\n',
        colsep: None,
    };
    let r = inputs::records(&groups, &reading, false).unwrap();
    let all: Vec<String> = r.iter.map(|r| r.join(" ")).collect();
    assert_eq!(all, ["a 1 x", "a 2 y", "b 1 x", "b 2 y"]);
}

#[test]
fn colsep_takes_fixed_strings_only() {
    assert_eq!(Colsep::parse(r"\t").unwrap().split("a\tb"), ["a", "b"]);
    assert_eq!(Colsep::parse(",").unwrap().split("a,,b"), ["a", "", "b"]);
    assert_eq!(Colsep::parse(r"\s+").unwrap().split(" a  b "), ["a", "b"]);
    assert!(Colsep::parse("[,;]").is_err());
}

#[test]
fn packing_stops_at_the_limit() {
    let t = Template::parse(&words("echo"), "{}", false, true, true).unwrap();
    let records: Vec<Record> = (0..30_000).map(|i| vec![i.to_string()]).collect();
    let jobs: Vec<Vec<Record>> =
        Packer::new(Box::new(records.into_iter()), usize::MAX, Some(&t)).collect();
    assert!(jobs.len() > 1);
    for job in &jobs {
        let fill = Fill {
            records: job,
            seq: 1,
            slot: 1,
        };
        assert!(t.expand(fill).len() <= inputs::MAX_LINE);
    }
    assert_eq!(jobs.iter().map(Vec::len).sum::<usize>(), 30_000);
    let two: Vec<Vec<Record>> =
        Packer::new(Box::new((0..5).map(|i| vec![i.to_string()])), 2, None).collect();
    assert_eq!(two.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
}

#[test]
fn blocks_end_at_records() {
    let text: String = (1..=10).map(|i| format!("{i}\n")).collect();
    let by_n: Vec<Vec<u8>> = Blocks::new(text.as_bytes(), 1 << 20, Some(3), b'\n').collect();
    assert_eq!(by_n.len(), 4);
    assert_eq!(by_n[0], b"1\n2\n3\n");
    let by_size: Vec<Vec<u8>> = Blocks::new(text.as_bytes(), 5, None, b'\n').collect();
    assert!(
        by_size.iter().all(|b| b.ends_with(b"\n") && b.len() <= 6),
        "{by_size:?}"
    );
    assert_eq!(by_size.concat(), text.as_bytes());
    let long: Vec<Vec<u8>> = Blocks::new(&b"abcdefgh\nij\n"[..], 3, None, b'\n').collect();
    assert_eq!(long, [b"abcdefgh\n".to_vec(), b"ij\n".to_vec()]);
}

#[test]
fn jobs_parse_and_resolve() {
    let j = |s: &str| s.parse::<Jobs>().unwrap().slots(4, None);
    assert_eq!(
        (j("3"), j("+1"), j("-1"), j("50%"), j("-9")),
        (3, 5, 3, 2, 1)
    );
    assert_eq!("0".parse::<Jobs>().unwrap().slots(4, Some(7)), 7);
    assert!("x".parse::<Jobs>().is_err());
    assert_eq!(
        with_jobs(&ExecutorSpec::Threads(Some(8)), Some(2)),
        ExecutorSpec::Threads(Some(2))
    );
    assert_eq!(
        with_jobs(&ExecutorSpec::Serial, Some(4)),
        ExecutorSpec::Serial
    );
}

#[test]
fn halt_parses_and_fires() {
    let now_fail_1 = Halt::When {
        now: true,
        on: HaltOn::Fail,
        limit: Limit::Count(1),
    };
    assert_eq!("never".parse(), Ok(Halt::Never));
    assert_eq!("now,fail=1".parse(), Ok(now_fail_1));
    assert_eq!("2".parse(), Ok(now_fail_1));
    let pct: Halt = "soon,fail=50%".parse().unwrap();
    assert!(pct.needs_total() && pct.fires(3, 0, Some(6)) && !pct.fires(2, 4, Some(6)));
    let succ: Halt = "now,success=1".parse().unwrap();
    assert!(succ.fires(5, 1, None));
    for bad in [
        "now",
        "now,fail=0",
        "later,fail=1",
        "soon,win=1",
        "now,fail=101%",
    ] {
        assert!(bad.parse::<Halt>().is_err(), "{bad}");
    }
    assert_eq!(pct.to_string(), "soon,fail=50%");
    assert_eq!(final_status(pct, 2, Some(6)), 34);
    assert_eq!(halt_status(now_fail_1, 7, 1, None), 7);
}

#[test]
fn sizes_and_timeouts_parse() {
    assert_eq!(parse_size("100k"), Ok(100_000));
    assert_eq!(parse_size("1M"), Ok(1 << 20));
    assert!(parse_size("0").is_err());
    let t: Timeout = "200%".parse().unwrap();
    assert_eq!(t.limit(&mut []), None);
    assert_eq!(
        t.limit(&mut [1.0, 0.5, 3.0]),
        Some(std::time::Duration::from_secs(2))
    );
}
