"""Prove the tests of everyday use can fail: plant each bug below (the torch front door,
the command line's files and summary, the pictures, the output folders, the README example),
run the tests meant to catch it, and restore the file. Usage, from the repository root:

    python tools/plant_everyday_bugs.py [WORDS ...]   # only the bugs whose name has a word

Prints each bug and the first failing test (exit code 1 means caught); docs/testing.md
records a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Bug(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: list[str]


BUGS = [
    Bug('export not in eval mode',
        'bbp_ref/importer/torch_export.py',
        '    module.eval()\n',
        '    pass\n',
        ['tests/test_torch_module.py']),
    Bug('cache key without the weights digest',
        'bbp_ref/model.py',
        'key = (tuple(array.shape[1:]), output, digest)',
        'key = (tuple(array.shape[1:]), output)',
        ['tests/test_torch_module.py']),
    Bug('--out through numpy.savez(path) (adds .npz)',
        'bbp_ref/cli.py',
        '    write_atomically(path, lambda stream: np.savez(stream, **safe))'
        '  # type: ignore[arg-type]',
        '    np.savez(path, **safe)  # type: ignore[arg-type]',
        ['tests/test_cli.py']),
    Bug('compare ignores meta/layers',
        'bbp_ref/checks/oracle.py',
        '    layers = candidate.get(META + "layers")',
        '    layers = None',
        ['tests/test_cli.py']),
    Bug('verify ignores the model digest',
        'bbp_ref/cli.py',
        '    if recorded is not None and recorded != _sha256(source):',
        '    if False:',
        ['tests/test_cli.py']),
    Bug('an .npz input not recognised',
        'bbp_ref/cli.py',
        '    if head.startswith(ZIP_MAGIC):',
        '    if False:',
        ['tests/test_cli.py']),
    Bug('summary silent about partial layers',
        'bbp_ref/cli.py',
        '    if set(e.layers) != set(e.layer_bias):\n        rows += _partial_lines(e)',
        '    pass',
        ['tests/test_cli.py']),
    Bug('overlay opaque everywhere',
        'bbp_ref/plot.py',
        '            opacity = overlay_alpha(images[i])',
        '            opacity = OVERLAY_ALPHA',
        ['tests/test_plot.py']),
    Bug('layer figure not wrapped',
        'bbp_ref/plot.py',
        'note, max_columns=MAX_COLUMNS)',
        'note)',
        ['tests/test_plot.py']),
    Bug('bars drawn as a stretched image',
        'bbp_ref/plot.py',
        '        return BARS if shape[0] <= MAX_BARS else LINES',
        '        return IMAGE',
        ['tests/test_plot.py']),
    Bug("--quiet ignored by the figures' bar",
        'bbp_ref/cli.py',
        'progress = Progress("figures", enabled=False if args.quiet else None)',
        'progress = Progress("figures", enabled=None)',
        ['tests/test_plot.py']),
    Bug("grid ignores --methods (always the poster's)",
        'bbp_ref/cli.py',
        'methods=plot.grid_methods(args.methods, args.rule)',
        'methods=plot.POSTER_METHODS',
        ['tests/test_plot.py']),
    Bug('ZipMap advice dropped',
        'bbp_ref/importer/signature.py',
        '    zipmaps = [node for node in graph.node if node.op_type == "ZipMap"]',
        '    zipmaps = []',
        ['tests/test_output_choice.py']),
    Bug('the figures written into the models folder',
        'bbp_ref/experiments/digit_flip.py',
        'images = out_folder(args.out, OUT_STEM)',
        'images = out_folder(args.out or folder, OUT_STEM)',
        ['tests/test_digit_flip.py']),
    Bug('README example summing over the batch',
        'README.md',
        'features = tuple(range(-e.gradient.ndim + np.ndim(e.output), 0))',
        'features = None',
        ['tests/test_docs.py']),
]


def main(words: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for bug in BUGS:
        if words and not any(word in bug.name for word in words):
            continue
        path = ROOT / bug.file
        text = path.read_text()
        assert text.count(bug.old) == 1, (bug.name, text.count(bug.old))
        path.write_text(text.replace(bug.old, bug.new))
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                                   "no:cacheprovider", *bug.tests], cwd=ROOT, env=env,
                                  capture_output=True, text=True, check=False)
        finally:
            path.write_text(text)
        failed = [row for row in done.stdout.splitlines() if row.startswith("FAILED")]
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        print(f"{bug.name}: exit {done.returncode}; {failed[0] if failed else last}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
