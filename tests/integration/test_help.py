#!/usr/bin/python3
"""One source of truth for the configuration keys (src/io/config.c's table).

usage: /usr/bin/python3 test_help.py PATH/TO/diffmpi SOURCE_DIR [--update-docs]

Checks, failing (exit 1) on any difference:
  - docs/configuration.md's block between KEYS_BEGIN and KEYS_END is exactly what
    `diffmpi help keys --markdown` prints;
  - `diffmpi train --help` and `diffmpi bench --help` list every key of that
    table with the same allowed values and default, followed by its meaning;
  - every default shown equals the value a fresh config_defaults gives:
    `diffmpi help defaults` (config_to_string of the defaults) and the
    configuration `diffmpi train` prints at start with no --config or --set
    (run where no MNIST exists, so it stops at the data);
  - `diffmpi --help` documents `help keys` and `help defaults`, and a bad
    help topic is one usage error line with exit code 2.
With --update-docs it rewrites that block from the binary instead.
"""
import os
import re
import subprocess
import sys
import tempfile

from common import check, finish, BIN, SRC

KEYS_BEGIN = "<!-- keys:begin"
KEYS_END = "<!-- keys:end -->"
TABLE = os.path.join(SRC, "docs", "configuration.md")
TABLE_NAME = "docs/configuration.md"
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_plm_rsh_agent="false",
           OPENBLAS_NUM_THREADS="1")


def run(args, cwd=None):
    return subprocess.run([os.path.abspath(BIN)] + args, capture_output=True,
                          text=True, timeout=120, env=ENV, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def table_block(lines):
    """(first, last) line indices inside the markers, or None."""
    begin = [i for i, l in enumerate(lines) if l.startswith(KEYS_BEGIN)]
    end = [i for i, l in enumerate(lines) if l.strip() == KEYS_END]
    if len(begin) != 1 or len(end) != 1 or end[0] <= begin[0]:
        return None
    return begin[0] + 1, end[0]


def markdown_rows(text):
    """{key: (values, default, meaning)} of the generated markdown table,
    and the keys in order."""
    rows, order = {}, []
    for line in text.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 4:
            return None, None
        key = cells[0].strip("`")
        unquote = [c.strip("`").replace("\\|", "|") for c in cells[1:]]
        rows[key] = tuple(unquote)
        order.append(key)
    return rows, order


def help_keys(text):
    """{key: (values, default, meaning)} from a --help key list: a line
    '  KEY  VALUES; default DEFAULT' then the meaning indented further."""
    out, key = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (\w+) +(.+); default (.+)$", line)
        if m:
            key = m.group(1)
            out[key] = [m.group(2), m.group(3), ""]
        elif key and line.startswith(" " * 20) and line.strip():
            out[key][2] = (out[key][2] + " " + line.strip()).strip()
        else:
            key = None
    return {k: tuple(v) for k, v in out.items()}


def config_lines(text):
    """{key: value} of 'key = value' lines."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+) = (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def same_value(shown, actual):
    """A default as the table writes it ('1e-4') against config_to_string's
    text ('0.0001'): equal as numbers when both are numbers, else as text;
    '(empty)' is the empty value."""
    if shown == "(empty)":
        return actual == ""
    try:
        return float(shown) == float(actual)
    except ValueError:
        return shown == actual


def update_docs(markdown):
    with open(TABLE) as f:
        lines = f.read().split("\n")
    span = table_block(lines)
    if not span:
        sys.exit("%s: no single %s ... %s block" % (TABLE_NAME, KEYS_BEGIN, KEYS_END))
    lines[span[0]:span[1]] = [""] + markdown.rstrip("\n").split("\n") + [""]
    with open(TABLE, "w") as f:
        f.write("\n".join(lines))
    print("%s: key table rewritten" % TABLE_NAME)


def main():
    md = run(["help", "keys", "--markdown"])
    check(md.returncode == 0 and md.stderr == "",
          "help keys --markdown: exit 0, nothing on stderr (%d, %r)"
          % (md.returncode, md.stderr[:200]))
    if "--update-docs" in sys.argv[3:]:
        update_docs(md.stdout)
        return
    rows, order = markdown_rows(md.stdout)
    check(bool(rows) and md.stdout.startswith("| key | values | default | meaning |\n"),
          "help keys --markdown prints a 4-column table")
    if not rows:
        finish()
    check(len(order) == len(set(order)) > 20,
          "distinct keys in the table (%d)" % len(order))

    # docs/configuration.md's block is the generated table, byte for byte.
    with open(TABLE) as f:
        lines = f.read().split("\n")
    span = table_block(lines)
    check(span is not None, "%s has one %s ... %s block" % (TABLE_NAME, KEYS_BEGIN, KEYS_END))
    if span:
        block = "\n".join(lines[span[0]:span[1]]).strip("\n") + "\n"
        want = md.stdout.split("\n")
        got = block.split("\n")
        diff = [i for i in range(max(len(want), len(got)))
                if i >= len(want) or i >= len(got) or want[i] != got[i]]
        where = ""
        if diff:
            i = diff[0]
            where = " (first difference in table line %d: docs %r, generated %r)" % (
                i + 1, got[i] if i < len(got) else None,
                want[i] if i < len(want) else None)
        check(not diff, "%s key table equals `diffmpi help keys "
              "--markdown`%s; regenerate with: test_help.py BIN SRC "
              "--update-docs" % (TABLE_NAME, where))

    # train --help and bench --help list every key, as the table does.
    for cmd in ("train", "bench"):
        h = run([cmd, "--help"])
        check(h.returncode == 0, "%s --help: exit 0" % cmd)
        listed = help_keys(h.stdout)
        missing = [k for k in order if k not in listed]
        check(not missing, "%s --help lists every key (missing: %s)" % (cmd, missing))
        wrong = [k for k in order if k in listed and listed[k] != rows[k]]
        check(not wrong, "%s --help shows the table's values, default and "
              "meaning (differ: %s)" % (cmd, wrong))
        extra = [k for k in listed if k not in rows]
        check(not extra, "%s --help lists no key outside the table (%s)" % (cmd, extra))
    keys_text = run(["help", "keys"])
    check(keys_text.returncode == 0 and help_keys(keys_text.stdout) ==
          help_keys(run(["train", "--help"]).stdout),
          "help keys prints the list of train --help")

    # The defaults shown are the defaults config_defaults gives.
    d = run(["help", "defaults"])
    defaults = config_lines(d.stdout)
    check(d.returncode == 0 and list(defaults) == order,
          "help defaults prints every key once, in table order")
    wrong = ["%s: shown %r, config_defaults %r" % (k, rows[k][1], defaults.get(k))
             for k in order if not same_value(rows[k][1], defaults.get(k, ""))]
    check(not wrong, "every default shown is config_defaults' value %s" % wrong)

    # ... and what train really starts from: run it with no --config and no
    # --set in an empty directory; it prints its configuration, then stops at
    # the missing data (exit 1).
    with tempfile.TemporaryDirectory(prefix="diffmpi-help-") as tmp:
        t = run(["train", "--out", os.path.join(tmp, "run")], cwd=tmp)
    started = config_lines(t.stdout)
    check(t.returncode == 1 and "data/mnist" in t.stderr,
          "train without data: exit 1 naming data/mnist (%d, %r)"
          % (t.returncode, t.stderr[:200]))
    check(started == defaults,
          "train prints config_defaults at start (differ: %s)"
          % sorted(k for k in set(started) | set(defaults)
                   if started.get(k) != defaults.get(k)))

    # diffmpi --help documents the help topics; a bad one is a usage error.
    m = run(["--help"])
    check(m.returncode == 0 and "help keys" in m.stdout and "--markdown" in m.stdout
          and "help defaults" in m.stdout, "diffmpi --help documents help keys/defaults")
    for args in (["help", "colours"], ["help", "keys", "--md"],
                 ["help", "defaults", "x"]):
        b = run(args)
        errs = b.stderr.splitlines()
        check(b.returncode == 2 and len(errs) == 1 and errs[0].startswith("diffmpi: ")
              and args[-1] in errs[0],
              "diffmpi %s: one usage error line, exit 2 (%d, %r)"
              % (" ".join(args), b.returncode, b.stderr[:200]))
    finish()


if __name__ == "__main__":
    main()
