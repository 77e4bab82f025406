#!/usr/bin/env python3
"""Where a kernel's warps wait, by source line: sums Nsight Compute's warp-state samples per CUDA line.

Profile one launch with source counters, then export the source page as CSV (-lineinfo builds, as hae's are):

  ncu --set full --import-source yes --kernel-name-base mangled -k regex:chunk_state_kernel \\
      --launch-skip 2 -c 1 -o state build/bench/bench_linear
  ncu -i state.ncu-rep --page source --csv --print-source sass,cuda | gzip > state.csv.gz
  bench/ncu-lines.py state.csv.gz --file linear_cuda.cu --top 20 \\
      --ranges "load:801-812,U:818-833,O:834-850"

Prints the total samples and the stall reasons' shares, then the lines with the most samples (each with its
three largest reasons), then the sums over the named line ranges (a kernel's phases). Lines of other files
(inlined headers) are summed per file. Some instructions map to no line (barriers the compiler placed, for
one): the header says what share of the samples the lines hold, and --sass sums every instruction's samples
by opcode instead. The CSV may be gzipped.
"""
import argparse
import collections
import csv
import gzip
import sys


def rows_of(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        yield from csv.reader(f)


def count(text):
    text = (text or "").replace(",", "").strip()
    return int(text) if text.isdigit() else 0


def read(path):
    """(file, line, source, samples, {reason: samples}) for every CUDA source line of the export, and
    {opcode: samples} over every SASS instruction."""
    out, ops, file, header = [], collections.Counter(), None, None
    for r in rows_of(path):
        if not r:
            continue
        if r[0] == "File Path":
            file = r[1]
            continue
        if r[0] == "Function Name":
            continue
        if r[0] == "Line No":
            header = r
            continue
        if header is None or len(r) != len(header):
            continue
        samples = count(r[header.index("Warp Stall Sampling (All Samples)")])
        if not r[0].strip().isdigit():  # a SASS row: its instruction in the second "Source" column
            words = r[3].split() if len(r) > 3 else []
            op = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "?")
            ops[op.split(".")[0]] += samples
            continue
        reasons = {h[len("stall_"):]: count(v) for h, v in zip(header, r)
                   if h.startswith("stall_") and "(Not Issued)" not in h}
        out.append((file or "?", int(r[0]), r[1].strip(), samples, reasons))
    return out, ops


def parse_ranges(text):
    ranges = []
    for part in filter(None, (text or "").split(",")):
        try:
            name, span = part.split(":")
            lo, hi = span.split("-")
            ranges.append((name.strip(), int(lo), int(hi)))
        except ValueError:
            sys.exit(f"ncu-lines: --ranges: '{part}' is not name:first-last (e.g. load:120-180)")
    return ranges


def top3(reasons, total):
    best = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {100 * v / max(total, 1):.0f}%" for k, v in best if v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --page source --csv export (optionally .gz)")
    ap.add_argument("--file", default="", help="only lines of source files whose path contains this")
    ap.add_argument("--top", type=int, default=25, help="lines to list (default 25)")
    ap.add_argument("--ranges", default="", help="name:first-last,... line ranges to sum (the --file's lines)")
    ap.add_argument("--sass", type=int, default=0, help="also list this many SASS opcodes by samples")
    a = ap.parse_args()
    ranges = parse_ranges(a.ranges)

    try:
        lines, ops = read(a.csv)
    except OSError as e:
        sys.exit(f"ncu-lines: {e}")
    if not lines:
        sys.exit(f"ncu-lines: no source lines with samples in {a.csv} (exported with --page source --csv?)")
    total, all_sass = sum(l[3] for l in lines), sum(ops.values())
    if all_sass:
        print(f"source lines hold {100 * total / all_sass:.0f}% of the {all_sass} instruction samples")
    reasons = collections.Counter()
    for l in lines:
        reasons.update(l[4])
    print(f"{total} samples; stall reasons: " +
          ", ".join(f"{k} {100 * v / max(total, 1):.1f}%" for k, v in reasons.most_common(8)))

    mine = [l for l in lines if a.file in l[0]]
    print(f"\ntop lines{' of ' + a.file if a.file else ''}:")
    for f, n, src, s, rs in sorted(mine, key=lambda l: -l[3])[:a.top]:
        print(f"{s:7d} {100 * s / max(total, 1):5.1f}%  {f.split('/')[-1]}:{n}  {src[:80]}  [{top3(rs, s)}]")

    if a.sass:
        print("\nSASS opcodes:")
        for op, s in ops.most_common(a.sass):
            print(f"{s:7d} {100 * s / max(all_sass, 1):5.1f}%  {op}")

    if ranges:
        groups, greasons = collections.Counter(), collections.defaultdict(collections.Counter)
        for f, n, _, s, rs in lines:
            name = None
            if a.file in f:
                name = next((nm for nm, lo, hi in ranges if lo <= n <= hi), "(other lines)")
            else:
                name = "(file " + f.split("/")[-1] + ")"
            groups[name] += s
            greasons[name].update(rs)
        print("\nranges:")
        for name, s in groups.most_common():
            print(f"{s:7d} {100 * s / max(total, 1):5.1f}%  {name:24s} [{top3(greasons[name], s)}]")


if __name__ == "__main__":
    main()
