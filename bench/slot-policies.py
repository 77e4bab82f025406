#!/usr/bin/env python3
"""Replays the dsa selections of a run through token-slot cache policies (issue 5's hit rate).

`hae run CONFIG --trace-selections` writes selections.txt into its run directory: a line per decode step,
dsa layer and sequence, "POS LAYER SEQ t1 .. tk" (-1 where the context held fewer than k tokens). Each
(layer, sequence) stream is replayed, from slots holding the prefix the run's prefill mirrored into them
(--mirrored N: tokens 0 .. N - 1, as many as the prefill chunks that fit the slots whole; 0 when the first chunk
is longer), through
  - lru:    hae's policy (memory/kv_slots.c): the misses take the slots least recently used, ties to the
            lowest slot, never a slot the step itself selected; its rate equals the run's
            decode_slot_hit_rate;
  - lfu:    the slots with the smallest use counts, decayed by DECAY each step;
  - belady: the clairvoyant bound, evicting the token used again last (no online policy does better).
    bench/slot-policies.py RUN_DIR/selections.txt [--slots 4096,8192] [--decay 0.9]
With --check RUN_DIR/summary.json (a run whose dsa K/V were in the host tier, with --mirrored as it ran) it exits
1 unless the lru replay at the first --slots equals the run's decode_slot_hit_rate (over the sequences it kept in
the host tier: those past its dsa_gpu_seqs).
"""
import argparse
import collections
import heapq
import json
import sys


def load(path):
    streams = collections.defaultdict(list)
    with open(path) as f:
        for n, line in enumerate(f, 1):
            v = line.split()
            if len(v) < 4:
                sys.exit(f"{path}:{n}: expected POS LAYER SEQ and the selections")
            streams[(int(v[1]), int(v[2]))].append([int(t) for t in v[3:] if int(t) >= 0])
    if not streams:
        sys.exit(f"{path}: no selections (was the run's model without decode steps?)")
    return streams


def lru(steps, S, mirrored):
    owner, stamp, where = [None] * S, [0] * S, {}
    for t in range(min(mirrored, S)):  # slot t holds token t, all older than any decode step
        owner[t], where[t] = t, t
    hits = total = 0
    for step, sel in enumerate(steps, 1):
        miss = []
        for t in sel:
            if t in where:
                stamp[where[t]] = step
                hits += 1
            else:
                miss.append(t)
        total += len(sel)
        if miss:
            # the least recently used (ties: lowest slots), taking the misses in slot order as hae does
            lru_first = heapq.nsmallest(len(miss), ((stamp[s], s) for s in range(S) if stamp[s] != step))
            free = sorted(s for _, s in lru_first)
            for s, t in zip(free, miss):
                if owner[s] is not None:
                    del where[owner[s]]
                owner[s], stamp[s], where[t] = t, step, s
    return hits, total


def lfu(steps, S, decay, mirrored):
    score = {t: 0.0 for t in range(min(mirrored, S))}
    hits = total = 0
    for sel in steps:
        for t in score:
            score[t] *= decay
        hits += sum(t in score for t in sel)
        total += len(sel)
        for t in sel:
            score[t] = score.get(t, 0.0) + 1.0
        if len(score) > S:
            chosen = set(sel)
            victims = sorted((v, t) for t, v in score.items() if t not in chosen)[: len(score) - S]
            for _, t in victims:
                del score[t]
    return hits, total


def belady(steps, S, mirrored):
    uses = collections.defaultdict(collections.deque)
    for n, sel in enumerate(steps):
        for t in sel:
            uses[t].append(n)
    never = len(steps)
    resident, heap, hits, total = {}, [], 0, 0  # resident: token -> its next use; heap: (-next use, token)
    for t in range(min(mirrored, S)):
        resident[t] = uses[t][0] if uses[t] else never
        heapq.heappush(heap, (-resident[t], t))
    for n, sel in enumerate(steps):
        for t in sel:
            hits += t in resident
            uses[t].popleft()
            resident[t] = uses[t][0] if uses[t] else never
            heapq.heappush(heap, (-resident[t], t))
        total += len(sel)
        chosen, held = set(sel), []
        while len(resident) > S:
            nu, t = heapq.heappop(heap)
            if resident.get(t) != -nu:
                continue  # a stale entry
            if t in chosen:
                held.append((nu, t))
                continue
            del resident[t]
        for e in held:
            heapq.heappush(heap, e)
    return hits, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="selections.txt of a `hae run --trace-selections` run")
    ap.add_argument("--slots", default="", help="slots per layer and sequence, comma-separated (default 2x and 4x k)")
    ap.add_argument("--decay", type=float, default=0.9, help="lfu's decay per step (default 0.9)")
    ap.add_argument("--mirrored", type=int, default=0, help="tokens the prefill left in the slots (default 0)")
    ap.add_argument("--check", metavar="SUMMARY", help="the run's summary.json: its hit rate must be the lru replay's")
    a = ap.parse_args()
    streams = load(a.trace)
    k = max(len(sel) for steps in streams.values() for sel in steps)
    slots = [int(x) for x in a.slots.split(",") if x] or [2 * k, 4 * k]
    if min(slots) < k:
        sys.exit(f"--slots: {min(slots)} slots cannot hold a step's {k} selections")
    layers = sorted({l for l, _ in streams})
    print(f"{a.trace}: {len(streams)} streams (dsa layers {layers}), {len(next(iter(streams.values())))} decode steps, "
          f"up to {k} selections a step")
    print()
    if a.check:
        with open(a.check) as f:
            summary = json.load(f)
        ran = summary["decode_slot_hit_rate"]
        on_gpu = summary.get("dsa_gpu_seqs", 0) if summary.get("dsa_kv") == "host" else 0  # no slots: no lookups
        h = t = 0
        for (_, seq), steps in streams.items():
            if seq < on_gpu:
                continue
            dh, dt = lru(steps, slots[0], a.mirrored)
            h, t = h + dh, t + dt
        if abs(h / t - ran) > 1e-6:
            sys.exit(f"{a.check}: the run's decode_slot_hit_rate {ran:.6f}, the lru replay at {slots[0]} slots "
                     f"{h / t:.6f}")
        print(f"{a.check}: the lru replay at {slots[0]} slots gives the run's hit rate, {ran:.6f}")
    print(f"| slots | lru (hae's) | lfu (decay {a.decay}) | belady (the bound) |")
    print("|---:|---:|---:|---:|")
    for S in slots:
        row = []
        for policy in (lambda s: lru(s, S, a.mirrored), lambda s: lfu(s, S, a.decay, a.mirrored),
                       lambda s: belady(s, S, a.mirrored)):
            h = t = 0
            for steps in streams.values():
                dh, dt = policy(steps)
                h, t = h + dh, t + dt
            row.append(f"{100 * h / t:.2f}%" if t else "-")
        print(f"| {S} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
