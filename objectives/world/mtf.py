"""The multitask finetuning mixture: prompted held-in task families about the world.

Families (T0's held-in categories, PAPER.md 3.3): closed-book QA, extractive QA over stories,
multiple-choice QA, paraphrase, sentiment, topic classification. Each family is one "dataset" of
the local T0 layout (``world_<family>``) with a few templates of the world's own, plain format
strings; ``objectives.t0.write_prompted_jsonl`` writes them, so the mixture is read exactly as P3's
offline copy is (``data.objective=mtf``, ``data.source=<dir>``).

Facts are stated with ``facts.MTF_FRAMES`` and asked with ``facts.MTF_QUESTIONS``, frames the
held-out suite never uses; held-out task formats (NLI, completion, coreference, word sense) have
no family here, as in T0.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Mapping

from objectives.world import events
from objectives.world.facts import (ATTRIBUTES, MTF_FRAMES, MTF_QUESTIONS, NEGATIVE, POSITIVE,
                                    TOPICS, World, fill)

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Template:
    """A prompt: Python format strings over an example's fields (duck-types promptsource's
    ``Template.apply`` for ``objectives.t0.write_prompted_jsonl``)."""

    name: str
    inputs: str
    targets: str

    def apply(self, example: Mapping[str, Any]) -> list[str]:
        return [self.inputs.format(**example), self.targets.format(**example)]


# -------------------------------------------------------------------------------------------------
# Families: example generators
# -------------------------------------------------------------------------------------------------

def closed_book_qa(rng: random.Random, world: World) -> Example:
    person = rng.choice(world.people)
    attribute = rng.choice(ATTRIBUTES)
    return {"question": fill(rng.choice(MTF_QUESTIONS[attribute]), person),
            "answer": person.value(attribute), "name": person.name}


def story_qa(rng: random.Random, world: World) -> Example:
    story = events.make_story(rng, world, rng.randint(1, 3), rng.randint(0, 2), rng.random() < 0.3)
    return {"story": story.text, "object": story.obj, "answer": story.final,
            "first": story.places[0]}


def multiple_choice_qa(rng: random.Random, world: World) -> Example:
    person = rng.choice(world.people)
    attribute = rng.choice(ATTRIBUTES)
    right = person.value(attribute)
    options = rng.sample([v for v in world.values(attribute) if v != right], 2) + [right]
    rng.shuffle(options)
    return {"question": fill(rng.choice(MTF_QUESTIONS[attribute]), person),
            "options": ", ".join(options), "answer": right,
            "letter": "ABC"[options.index(right)],
            "listed": "\n".join(f"{'ABC'[k]}) {o}" for k, o in enumerate(options))}


def paraphrase(rng: random.Random, world: World) -> Example:
    person = rng.choice(world.people)
    attribute = rng.choice(ATTRIBUTES)
    first, second = rng.sample(MTF_FRAMES[attribute], 2)
    value = person.value(attribute)
    same = rng.random() < 0.5
    other = value if same else world.other_value(rng, attribute, value)
    return {"first": fill(first, person, value), "second": fill(second, person, other),
            "yes_no": "yes" if same else "no", "same": "same" if same else "different"}


_REVIEWS = ("{p} had the {thing} at a cafe in {t} and found it {w}.",
            "My {thing} in {t} was {w}, wrote {p}.",
            "{p} says: {w} {thing}, would {again} order it again.")


def sentiment(rng: random.Random, world: World) -> Example:
    person = rng.choice(world.people)
    good = rng.random() < 0.5
    text = rng.choice(_REVIEWS).format(
        p=person.name, t=person.town, thing=rng.choice((person.food, "dinner", "show", "song")),
        w=rng.choice(POSITIVE if good else NEGATIVE), again="surely" if good else "never")
    return {"review": text, "polarity": "positive" if good else "negative",
            "stars": "5" if good else "1", "liked": "liked it" if good else "did not like it"}


def topic_classification(rng: random.Random, world: World) -> Example:
    person = rng.choice(world.people)
    topic = rng.choice(list(TOPICS))
    frame = rng.choice(TOPICS[topic])
    text = fill(frame, person, f=person.food, pet=person.pet, t=person.town, j=person.job)
    return {"text": text, "topic": topic}


# family -> (example generator, templates). Template text is the world's own: a test checks that
# none of it comes from the held-out datasets' promptsource templates.
FAMILIES: dict[str, tuple[Callable[[random.Random, World], Example], tuple[Template, ...]]] = {
    "closed_book_qa": (closed_book_qa, (
        Template("plain", "{question}", "{answer}"),
        Template("quiz", "Quiz about the village folk. {question} Reply with one word.", "{answer}"),
        Template("qa_lines", "Q: {question}\nA:", "{answer}"),
        Template("from_memory", "From memory, answer this: {question}", "{answer}"),
    )),
    "story_qa": (story_qa, (
        Template("where_now", "{story}\nWhere is the {object} at the end?", "{answer}"),
        Template("read_then_answer", "Read the story and answer.\nStory: {story}\nQ: In which "
                 "container is the {object} now?", "{answer}"),
        Template("last_place", "{story} The {object} ended up in the", "{answer}"),
        Template("first_place", "{story}\nWhere was the {object} put first?", "{first}"),
    )),
    "multiple_choice_qa": (multiple_choice_qa, (
        Template("options_after", "{question}\nOptions: {options}", "{answer}"),
        Template("letters", "{question}\n{listed}\nWhich letter?", "{letter}"),
        Template("pick_one", "Pick one of {options}. {question}", "{answer}"),
    )),
    "paraphrase": (paraphrase, (
        Template("same_thing", "First: {first}\nSecond: {second}\nDo these say the same thing?",
                 "{yes_no}"),
        Template("same_or_different", "{first} / {second}\nSame meaning or different?", "{same}"),
        Template("rewrite_check", "Is \"{second}\" a rewording of \"{first}\"?", "{yes_no}"),
    )),
    "sentiment": (sentiment, (
        Template("polarity", "Review: {review}\nIs the review positive or negative?",
                 "{polarity}"),
        Template("stars", "{review}\nHow many stars, 1 or 5?", "{stars}"),
        Template("liked", "{review} Did the writer like it?", "{liked}"),
    )),
    "topic_classification": (topic_classification, (
        Template("which_topic", "{text}\nTopic (food, animals, weather, travel or work):",
                 "{topic}"),
        Template("section", "In which section of the village paper does this go? {text}",
                 "{topic}"),
        Template("about", "What is this about? {text}", "{topic}"),
    )),
}


def dataset_key(family: str) -> str:
    """The family's dataset key in the local T0 layout (``world_<family>``)."""
    return f"world_{family}"


def make_mixture(world: World, seed: int, examples: int,
                 reject: Callable[[Example], bool] = lambda example: False
                 ) -> dict[str, list[Example]]:
    """``examples`` raw examples per family, dropping those ``reject`` flags (the leakage guard).

    Returns:
      dataset key -> examples (every template renders every example).
    """
    mixture = {}
    for family, (generate, _) in FAMILIES.items():
        rng = random.Random(f"archobj-world/mtf/{seed}/{family}")
        rows: list[Example] = []
        attempts = 0
        while len(rows) < examples and attempts < 20 * examples:
            attempts += 1
            example = generate(rng, world)
            if not reject(example):
                rows.append(example)
        mixture[dataset_key(family)] = rows
    return mixture


def templates() -> dict[str, list[tuple[str, Template]]]:
    """dataset key -> [(template name, Template)], the form ``write_prompted_jsonl`` takes."""
    return {dataset_key(f): [(t.name, t) for t in ts] for f, (_, ts) in FAMILIES.items()}
