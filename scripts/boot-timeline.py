#!/usr/bin/env python3
"""Draws the first boot's timeline as an SVG (docs/boot-timeline.svg).

Input: the timeline lines the VM tier prints for a scenario
(tests/vm_e2e.rs, print_timeline), e.g.

      43.0  (+  11.8)  cloud-init final stage

one per mark, seconds since qemu start. Regenerate after a VM-tier run:

    CUBEBOOT_E2E=1 cargo test --test vm_e2e -- --include-ignored --nocapture \
      vm_first_boot > run.log
    scripts/boot-timeline.py --from-log run.log > docs/boot-timeline.txt
    scripts/boot-timeline.py docs/boot-timeline.txt > docs/boot-timeline.svg

Standard library only; the same input gives the same bytes.
"""
import re
import sys
from xml.sax.saxutils import escape

MARK = re.compile(r"^\s*([0-9]+\.[0-9])\s+\(\+\s*[0-9.]+\)\s+(.+?)\s*$")
# A mark this run did not reach (e.g. GRUB's second start after a kexec):
# part of the block, not a mark.
UNSEEN = re.compile(r"^\s+-\s+.+\(not seen\)\s*$")

# The stretches drawn as bars: (label, from mark, to mark).
PHASES = [
    ("firmware, GRUB, kernel A, cloud-init", "GRUB, boot 1", "cloud-init final stage"),
    ("preflight, fetch, prereqs, data disk", "helper: fetch starts", "helper: kernel-install starts"),
    ("kernel package + initramfs", "helper: kernel-install starts", "helper: kernel-boot starts"),
    # Kernel B's first console line: after GRUB (firmware reboot) or right
    # after kernel A hands over (kexec), so both trial boots draw alike.
    ("arm trial boot, reboot", "helper: kernel-boot starts", "kernel B starts"),
    ("kernel B to the resume unit", "kernel B starts", "helper: kernel-verify starts"),
    ("verify, kvm_pvm, commit", "helper: kernel-verify starts", "helper: cube-install starts"),
    ("Cube install", "helper: cube-install starts", "helper: cube-verify starts"),
    ("verify, harden, report", "helper: cube-verify starts", "status terminal"),
]


def marks_from(lines):
    marks = {}
    for line in lines:
        m = MARK.match(line)
        if m and m.group(2) not in marks:
            marks[m.group(2)] = float(m.group(1))
    return marks


def first_boot_lines(log):
    """The first-boot scenario's timeline out of a --nocapture log: the
    block of marks that has the trial boot's kernel-verify (the rollback and
    cluster scenarios print none)."""
    blocks, block = [], []
    for line in log:
        if MARK.match(line):
            block.append(line.rstrip("\n"))
        elif UNSEEN.match(line):
            continue
        elif block:
            blocks.append(block)
            block = []
    blocks.append(block)
    found = [b for b in blocks if any("helper: kernel-verify starts" in l for l in b)]
    if not found:
        sys.exit("boot-timeline: no first-boot timeline in the log")
    return found[-1]


def svg(marks):
    width, left, row, top = 760, 250, 26, 40
    end = max(marks.values())
    scale = (width - left - 60) / end
    rows = []
    for i, (label, a, b) in enumerate(PHASES):
        if a not in marks or b not in marks:
            sys.exit(f"boot-timeline: mark {a!r} or {b!r} missing from the input")
        x = left + marks[a] * scale
        w = max((marks[b] - marks[a]) * scale, 1.0)
        y = top + i * row
        rows.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="16" fill="#4a7bb7"/>'
            f'<text x="{x + w + 4:.1f}" y="{y + 15}">{marks[b] - marks[a]:.1f} s</text>'
        )
    height = top + len(PHASES) * row + 40
    axis = []
    for t in range(0, int(end) + 1, 20):
        x = left + t * scale
        axis.append(
            f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 34}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{height - 18}" text-anchor="middle">{t}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">\n'
        f'<text x="10" y="20" font-size="14">First boot in the VM tier: seconds since qemu start '
        f'(GRUB 1 to status terminal {marks["status terminal"] - marks["GRUB, boot 1"]:.1f} s)</text>\n'
        + "\n".join(axis) + "\n" + "\n".join(rows) + "\n"
        f'<text x="{left}" y="{height - 4}">seconds</text>\n</svg>\n'
    )


def main(argv):
    if len(argv) == 3 and argv[1] == "--from-log":
        with open(argv[2], encoding="utf-8", errors="replace") as f:
            sys.stdout.write("\n".join(first_boot_lines(f)) + "\n")
        return
    if len(argv) != 2:
        sys.exit("usage: boot-timeline.py TIMELINE.txt > out.svg | --from-log RUN.log")
    with open(argv[1], encoding="utf-8") as f:
        sys.stdout.write(svg(marks_from(f)))


main(sys.argv)
