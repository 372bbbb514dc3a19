"""The T0-Eval fixture: a few synthetic examples per held-out dataset, in each dataset's hub schema.

Written by this module, never copied from the datasets: the sentences are generated from small
word lists, every label of every dataset is present, and every one of the 116 prompts renders on
them with its target among the answer choices (``tests/test_t0_eval.py``). ``make_fixture`` writes
the committed copy under ``harness/eval/suites/fixtures/t0/`` (``harness.eval.t0_eval.FIXTURE_DIR``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from harness.eval.t0_eval import export_split

_NAMES = ("Mara", "Tobin", "Ines", "Kofi", "Lena", "Ravi", "Sofia", "Arlo", "Nadia")
_PLACES = ("market", "library", "harbour", "museum", "bakery", "stadium", "garden", "station",
           "theatre")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ITEMS = ("a lamp", "two maps", "fresh bread", "a blue kite", "some stamps", "a chess set",
          "a tea pot", "three pears", "a wool hat")


def _uid(*parts: Any) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:16]


def _anli_examples(round_number: int) -> list[dict[str, Any]]:
    examples = []
    for i in range(3):
        k = 3 * round_number + i
        name, place, day, item = (_NAMES[k % 9], _PLACES[(k + 2) % 9], _DAYS[k % 7],
                                  _ITEMS[(k + 4) % 9])
        label = (i + round_number) % 3  # 0 entailment, 1 neutral, 2 contradiction
        hypothesis = (f"{name} bought {item}.", f"{name} enjoyed the walk to the {place}.",
                      f"{name} stayed at home all {day}.")[label]
        examples.append({"uid": _uid("anli", round_number, i),
                         "premise": f"{name} walked to the {place} on {day} and bought {item}.",
                         "hypothesis": hypothesis, "label": label,
                         "reason": "Synthetic example written for the archobj tests."})
    return examples


def _cb_examples() -> list[dict[str, Any]]:
    examples = []
    for i, label in enumerate((0, 1, 2, 0)):  # 0 entailment, 1 contradiction, 2 neutral
        name, place, day = _NAMES[i + 2], _PLACES[i + 3], _DAYS[i + 1]
        hypothesis = (f"the {place} opens on {day}", f"the {place} stays closed on {day}",
                      f"the {place} will be crowded on {day}")[label]
        examples.append({"premise": f"{name} told me that the {place} opens on {day}. I think "
                                    f"{name.lower()} is right about it.",
                         "hypothesis": hypothesis, "idx": i, "label": label})
    return examples


def _rte_examples() -> list[dict[str, Any]]:
    examples = []
    for i, label in enumerate((0, 1, 1, 0)):  # 0 entailment, 1 not_entailment
        city, n = ("Lisbon", "Nairobi", "Osaka", "Quito")[i], 12 + 7 * i
        org = ("Harbour Board", "City Museum", "Rail Company", "Garden Trust")[i]
        hypothesis = (f"The {org} hired new engineers.", f"The {org} closed its office in {city}.")
        examples.append({"premise": f"The {org} in {city} announced on {_DAYS[i]} that it had "
                                    f"hired {n} new engineers for its new projects.",
                         "hypothesis": hypothesis[label], "idx": i, "label": label})
    return examples


_COPA = (  # premise, question, right, wrong
    ("The kettle began to whistle.", "cause", "The water was boiling.", "The lid was painted."),
    ("The road was covered in ice.", "effect", "The cars drove slowly.", "The birds sang louder."),
    ("{name}'s phone went dark.", "cause", "The battery ran out.", "The screen was clean."),
    ("The {place} closed early.", "effect", "Visitors went home.", "The roof turned green."),
)


def _copa_examples() -> list[dict[str, Any]]:
    examples = []
    for i, (premise, question, right, wrong) in enumerate(_COPA):
        label = i % 2
        choices = (right, wrong) if label == 0 else (wrong, right)
        examples.append({"premise": premise.format(name=_NAMES[i], place=_PLACES[i]),
                         "choice1": choices[0], "choice2": choices[1], "question": question,
                         "idx": i, "label": label})
    return examples


_HELLASWAG = (  # activity, ctx_a, ctx_b, right ending, wrong endings
    ("Baking bread", "A man kneads dough on a wooden table.", "he",
     "shapes it into a loaf and puts it in the oven.",
     ("throws the table into the lake.", "reads the dough a story.", "paints the oven red.")),
    ("Washing a car", "A woman fills a bucket with soapy water.", "she",
     "scrubs the car door with a sponge.",
     ("drinks the bucket in one go.", "plants the sponge in a pot.", "sings to the tyres.")),
    ("Playing drums", "A boy sits behind a drum kit on a stage.", "the boy",
     "starts a steady beat with the sticks.",
     ("folds the stage into a box.", "eats the cymbals slowly.", "mails the drums away.")),
    ("Raking leaves", "Two girls stand in a yard full of leaves.", "they",
     "rake the leaves into a large pile.",
     ("turn the leaves into coins.", "carry the yard inside.", "teach the rake to swim.")),
)


def _hellaswag_examples() -> list[dict[str, Any]]:
    examples = []
    for i, (activity, ctx_a, ctx_b, right, wrong) in enumerate(_HELLASWAG):
        endings = list(wrong)
        endings.insert(i % 4, right)
        examples.append({"ind": 100 + i, "activity_label": activity, "ctx_a": ctx_a,
                         "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b[0].upper()}{ctx_b[1:]}",
                         "endings": endings, "source_id": f"synthetic~{i}", "split": "val",
                         "split_type": ("indomain", "zeroshot")[i % 2], "label": str(i % 4)})
    return examples


def _story_cloze_examples() -> list[dict[str, Any]]:
    examples = []
    for i in range(4):
        name, place = _NAMES[i + 4], _PLACES[i + 1]
        right = f"{name} reached the {place} tired but happy."
        wrong = f"{name} decided that the {place} had never existed."
        answer = 1 + i % 2
        quiz = (right, wrong) if answer == 1 else (wrong, right)
        examples.append({"story_id": _uid("story_cloze", i),
                         "input_sentence_1": f"{name} planned a visit to the {place}.",
                         "input_sentence_2": f"{name} packed {_ITEMS[i]} the night before.",
                         "input_sentence_3": "In the morning the bus was late.",
                         "input_sentence_4": f"{name} chose to walk there instead.",
                         "sentence_quiz1": quiz[0], "sentence_quiz2": quiz[1],
                         "answer_right_ending": answer})
    return examples


_WSC = (  # first, second, pronoun, referent index (0: first, 1: second), sentence pattern
    ("Mara", "Ines", "she", 0, "{a} thanked {b} because {p} had found the lost keys."),
    ("Tobin", "Kofi", "he", 1, "{a} called {b} because {p} was waiting at the station."),
    ("The farmers", "the traders", "they", 0, "{a} fed {b} because {p} had grown extra grain."),
    ("Lena", "Sofia", "her", 1, "{a} lent {b} a coat because {p} jacket was wet."),
)


def _wsc_examples() -> list[dict[str, Any]]:
    examples = []
    for i, (a, b, pronoun, referent, pattern) in enumerate(_WSC):
        text = pattern.format(a=a, b=b, p=pronoun)
        words = text.split(" ")
        # Alternate labels: ask about the referent (True) or the other noun phrase (False).
        label = 1 - i % 2
        span1 = (a, b)[referent if label else 1 - referent]
        examples.append({"text": text, "span1_index": words.index(span1.split(" ")[0]),
                         "span2_index": words.index(pronoun), "span1_text": span1,
                         "span2_text": pronoun, "idx": i, "label": label})
    return examples


_WINOGRANDE = (  # sentence, option1, option2, answer
    ("{a} gave the map to {b} because _ already knew the way.", "1"),
    ("{a} asked {b} for help because _ was good at fixing bikes.", "2"),
    ("{a} waited for {b} at the {place} because _ arrived first.", "1"),
    ("{a} could not lift the box, so {b} carried it because _ was stronger.", "2"),
)


def _winogrande_examples() -> list[dict[str, Any]]:
    examples = []
    for i, (pattern, answer) in enumerate(_WINOGRANDE):
        a, b = _NAMES[i], _NAMES[i + 5]
        examples.append({"sentence": pattern.format(a=a, b=b, place=_PLACES[i]), "option1": a,
                         "option2": b, "answer": answer})
    return examples


_WIC = (  # word, sentence 1, sentence 2, same sense
    ("bank", "Mara sat on the bank of the river.", "Tobin opened an account at the bank.", 0),
    ("light", "Turn on the light in the hall.", "The light from the lamp was warm.", 1),
    ("run", "Kofi likes to run before breakfast.", "Ines will run the shop this summer.", 0),
    ("paper", "Write your name on the paper.", "She folded the paper into a boat.", 1),
)


def _wic_examples() -> list[dict[str, Any]]:
    examples = []
    for i, (word, sentence1, sentence2, label) in enumerate(_WIC):
        start1, start2 = sentence1.index(word), sentence2.index(word)
        examples.append({"word": word, "sentence1": sentence1, "sentence2": sentence2,
                         "start1": start1, "start2": start2, "end1": start1 + len(word),
                         "end2": start2 + len(word), "idx": i, "label": label})
    return examples


def fixture_examples() -> dict[str, list[dict[str, Any]]]:
    """The fixture's examples per dataset name (synthetic, deterministic, every label present)."""
    return {
        "anli_r1": _anli_examples(1), "anli_r2": _anli_examples(2), "anli_r3": _anli_examples(3),
        "cb": _cb_examples(), "rte": _rte_examples(), "copa": _copa_examples(),
        "hellaswag": _hellaswag_examples(), "story_cloze": _story_cloze_examples(),
        "wsc": _wsc_examples(), "winogrande": _winogrande_examples(), "wic": _wic_examples(),
    }


def make_fixture(out_dir: str | os.PathLike) -> dict[str, int]:
    """Writes the project's T0-Eval fixture (``FIXTURE_DIR``) into ``out_dir``, replacing files.

    Returns:
      path relative to ``out_dir`` -> number of examples.
    """
    written = {}
    for name, examples in fixture_examples().items():
        path = export_split(examples, out_dir, name, overwrite=True)
        written[path.relative_to(out_dir).as_posix()] = len(examples)
    return written
