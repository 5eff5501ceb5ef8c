#!/usr/bin/env python3
"""Text corpus for the SEARCH benchmarks: Debian package descriptions as CSV documents.

Every binary package that apt knows about becomes one document:

    id          1-based integer, in package-name order
    creator_id  1-based rank of the package's Maintainer field among the distinct
                maintainers (sorted as strings), so a team or person keeps one small id
    title       the one-line short description
    body        the long description as plain text: the leading space of each line is
                dropped, lines of a paragraph are joined with spaces, the " ." separator
                lines become a blank line between paragraphs, and verbatim lines (two or
                more leading spaces: lists, examples) stay on lines of their own
    category    the Section field ("libs", "python", "games", ...)

Packages are deduplicated by name (bookworm and bookworm-security both list some of
them; the first record that has a long description wins).

Where the text comes from: the records come from `apt-cache dumpavail`, but Debian's
Packages files only carry the short description (plus a Description-md5); the long
descriptions are in the Translation-en index files, which this machine's apt
configuration does not download by default (`Acquire::Languages "none"`). Fetch them
once with

    apt-get update -o Acquire::Languages=en

and this script reads /var/lib/apt/lists/*_i18n_Translation-en* (through apt-helper,
which undoes lz4/gz/xz) and joins them on Description-md5. Without them every body is
empty, which the script refuses unless --allow-empty-bodies is given.

Licence: package descriptions are Debian packaging metadata, written by each package's
maintainers and distributed with the archive indexes. The corpus is generated on the
benchmark machine at benchmark time from the local apt lists and is not committed to
this repository; only this generator is.

Sizes: the bookworm main archive gives about 64k documents (~27 MB of CSV). --repeat N writes the
corpus N times with new ids (copy r of document k gets id r * n + k); repeated documents
are exact copies of the text (same title, body, creator and category), so a 1M-document
corpus from --repeat 16 (1.02M documents) has the vocabulary of the 64k one and every posting list repeats
N times. That keeps the document-length distribution and term frequencies realistic
but makes the term dictionary smaller than a real 1M-document corpus would have.

The CSV has a header line, quotes fields as RFC 4180 does (a field with a comma, quote
or newline is quoted, quotes doubled; bodies keep their paragraph newlines inside the
quotes unless --flat) and ends records with LF rather than CRLF (PostgreSQL-style COPY
... CSV HEADER, which tidal serve accepts, reads either). tidal serve refuses one COPY
of more than 256 MiB (COPY_BYTES_MAX), so load a large repeat in several COPYs.

Usage:

    python3 benches/peers/text/make_corpus.py --out /tmp/debian.csv
    python3 benches/peers/text/make_corpus.py --out /tmp/debian-200k.csv --repeat 3
"""

import argparse
import csv
import glob
import gzip
import lzma
import os
import subprocess
import sys

LISTS = "/var/lib/apt/lists"


def stanzas(text):
    """Yields each deb822 stanza as a list of (field, value-lines) pairs."""
    fields = []
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
                fields = []
            continue
        if line[0] in " \t":
            if fields:
                fields[-1][1].append(line)
            continue
        name, _, value = line.partition(":")
        fields.append((name, [value.strip()]))
    if fields:
        yield fields


def read_index(path):
    """The decompressed text of an apt list file."""
    try:
        out = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", path],
            check=True,
            capture_output=True,
        ).stdout
        return out.decode("utf-8", errors="replace")
    except (OSError, subprocess.CalledProcessError):
        pass
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    if path.endswith(".xz"):
        with lzma.open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    if path.endswith(".lz4"):
        sys.exit(f"cannot decompress {path}: apt-helper failed and Python has no lz4")
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def long_descriptions():
    """Description-md5 -> long-description continuation lines, from Translation-en."""
    out = {}
    paths = sorted(glob.glob(os.path.join(LISTS, "*_i18n_Translation-en*")))
    for path in paths:
        if path.endswith(".diff") or "/partial/" in path:
            continue
        for st in stanzas(read_index(path)):
            d = dict(st)
            md5 = d.get("Description-md5", [""])[0]
            desc = d.get("Description-en")
            if md5 and desc and md5 not in out:
                out[md5] = desc[1:]
    return out, paths


def plain_text(lines):
    """Debian extended-description lines (each starting with a space) as plain text."""
    paragraphs = []
    cur = []  # lines of the current paragraph; verbatim ones already separate
    joined = ""
    for raw in lines:
        line = raw[1:] if raw.startswith((" ", "\t")) else raw
        if line.strip() == ".":
            if joined or cur:
                paragraphs.append("\n".join(cur + ([joined] if joined else [])))
            cur, joined = [], ""
            continue
        if line.startswith((" ", "\t")):  # verbatim: a line of its own
            if joined:
                cur.append(joined)
                joined = ""
            cur.append(line.strip())
        else:
            joined = f"{joined} {line.strip()}" if joined else line.strip()
    if joined or cur:
        paragraphs.append("\n".join(cur + ([joined] if joined else [])))
    return "\n\n".join(p for p in paragraphs if p.strip())


def packages():
    """Package stanzas from `apt-cache dumpavail` (all sources apt knows)."""
    try:
        text = subprocess.run(
            ["apt-cache", "dumpavail"], check=True, capture_output=True
        ).stdout.decode("utf-8", errors="replace")
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"apt-cache dumpavail failed: {e}")
    for st in stanzas(text):
        yield dict(st)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="CSV file to write")
    ap.add_argument("--repeat", type=int, default=1,
                    help="write the corpus N times with new ids (copies of the text)")
    ap.add_argument("--flat", action="store_true",
                    help="collapse all whitespace in body to single spaces (one line per record)")
    ap.add_argument("--allow-empty-bodies", action="store_true",
                    help="write the corpus even if no long descriptions were found")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    longs, tpaths = long_descriptions()
    chosen = {}  # name -> (maintainer, title, body, section)
    records = 0
    for d in packages():
        name = d.get("Package", [""])[0]
        if not name:
            continue
        records += 1
        desc = d.get("Description")
        if not desc:
            continue
        title = desc[0]
        md5 = d.get("Description-md5", [""])[0]
        extra = longs.get(md5) or desc[1:]  # a few Packages files still inline it
        body = plain_text(extra)
        if name in chosen and (chosen[name][2] or not body):
            continue
        maint = d.get("Maintainer", [""])[0]
        section = d.get("Section", [""])[0]
        chosen[name] = (maint, title, body, section)

    if not chosen:
        sys.exit("apt-cache dumpavail listed no packages: run `apt-get update` first")
    with_body = sum(1 for v in chosen.values() if v[2])
    if with_body == 0 and not args.allow_empty_bodies:
        sys.exit(
            "no long descriptions found (no Translation-en lists in /var/lib/apt/lists):\n"
            "  run `apt-get update -o Acquire::Languages=en` once, or pass --allow-empty-bodies"
        )

    maint_rank = {m: i + 1 for i, m in enumerate(sorted({v[0] for v in chosen.values()}))}
    names = sorted(chosen)
    n = len(names)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(["id", "creator_id", "title", "body", "category"])
        rows = []
        for name in names:
            maint, title, body, section = chosen[name]
            if args.flat:
                body = " ".join(body.split())
            rows.append((maint_rank[maint], title, body, section))
        for r in range(args.repeat):
            base = r * n
            for k, (cid, title, body, section) in enumerate(rows):
                w.writerow([base + k + 1, cid, title, body, section])
    size = os.path.getsize(args.out)
    docs = n * args.repeat
    print(f"apt records read: {records}; translation lists: {len(tpaths)}", file=sys.stderr)
    print(f"distinct packages: {n} ({with_body} with a long description); "
          f"maintainers: {len(maint_rank)}; repeat: {args.repeat}", file=sys.stderr)
    print(f"wrote {docs} documents, {size} bytes ({size / 1e6:.1f} MB) to {args.out}")


if __name__ == "__main__":
    main()
