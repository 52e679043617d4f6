#!/usr/bin/env bash
# Builds and runs the README's examples as a new user would: a fresh crate
# outside the workspace that depends on the library by path, its sources
# taken from the README's code blocks marked `<!-- user crate: PATH -->`.
#   bash scripts/user-crate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

cat > "$dir/Cargo.toml" <<TOML
[package]
name = "readme-user"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
multitasking = { path = "$repo/multitasking" }
futures = "0.3"
tokio = { version = "1", features = ["rt", "time"] }

# Not a member of the multitasking workspace.
[workspace]
TOML
# The workspace's lock file pins the same versions (cargo drops the rest).
cp Cargo.lock "$dir/Cargo.lock"

python3 - "$dir" <<'PY'
import pathlib, re, sys
out = pathlib.Path(sys.argv[1])
text = pathlib.Path("README.md").read_text()
blocks = re.findall(r"<!-- user crate: (\S+) -->\n```rust\n(.*?)```", text, re.S)
if not blocks:
    sys.exit("no README block is marked for the user crate")
for path, code in blocks:
    f = out / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(code)
    print(f"user crate: {path} from the README")
PY

export CARGO_TARGET_DIR="$repo/target/user-crate"
cargo build --quiet --manifest-path "$dir/Cargo.toml" --bins
bin="$CARGO_TARGET_DIR/debug"
run() {
  local name=$1 expect=$2 out
  out=$(timeout 120 "$bin/$name") || { echo "error: the README's $name example failed" >&2; exit 1; }
  grep -qF -- "$expect" <<<"$out" || { echo "error: the README's $name example printed: $out" >&2; exit 1; }
  echo "user crate: $name ran"
}
run readme-user "97 is prime: true"
run async "async: done"
run scoped "scoped: [6, 7, 7]"
