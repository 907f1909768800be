"""The model shipped in the package (issue 8): it loads from the installed package, is the
float16 .tz the README describes, translates out of the box, and is a real translation model."""
import os
import subprocess
import sys

import pytest

from tinyzip import container
from tinyzip.data import load_task
from tinyzip.report import evenly_spaced
from tinyzip.translation import SHIPPED_MODEL, evaluate, load_translator


def test_shipped_model_is_a_float16_tz_of_at_most_10_mb():
    tz = container.load_tz(SHIPPED_MODEL)
    assert os.path.getsize(SHIPPED_MODEL) <= 10 * 2 ** 20
    assert {p.method for p in tz.packed.values()} == {"float16"}
    assert tz.extra["task"] == "bible-es" and tz.extra["steps"] > 0


@pytest.mark.slow
def test_shipped_model_translates_held_out_verses():
    """A floor far below the README's measured BLEU: it catches a broken or mismatched file
    (tokenizer, config, weights), not small changes."""
    translator = load_translator(SHIPPED_MODEL)
    pairs = evenly_spaced(load_task("bible-es").test, 100)
    assert evaluate(translator, pairs)["bleu"] > 12.0


def test_translate_works_out_of_the_box():
    run = subprocess.run([sys.executable, "-m", "tinyzip.cli", "translate", "--beam", "1",
                          "And God said, Let there be light.", "The Lord is my shepherd."],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.strip() for line in lines)
