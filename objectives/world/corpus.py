"""The pretraining corpus: natural-looking documents about the world, one per line.

A document is one of a dozen kinds (``KINDS`` with their shares). The shares follow issue 12's
measurements: verification (is a claim true, false or unknown, given the world or a passage) is a
large share and balanced between its answers, because a small model trained on a corpus where it
was 6% kept binary and NLI formats exactly at chance. Answers often end a document (Q&A snippets),
so that a one-word answer followed by the end of the text is a common pattern.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator

from objectives.world import events
from objectives.world.facts import (ATTRIBUTES, EVAL_FRAMES, EVAL_QUESTIONS, JOBS, MTF_FRAMES,
                                    MTF_QUESTIONS, NEGATION, NEGATIVE, POSITIVE, QUESTION,
                                    SCRIPTS, SENSES, STATEMENT, TOOLS, TOPICS, UNDETERMINED, YES_NO,
                                    Person, World, fill)

# How a verdict is said: vocabularies of (true, false, unknown), each used for all three verdicts
# alike, so that no answer word carries a prior of its own (world version 4). Version 3 said
# "true" in 13 ways and "unknown" in 10 others, none of them "Inconclusive", "Neither" or
# "Guaranteed": under the held-out prompts that answer in those words, the model put one answer on
# almost every example (objectives/WORLD.md, "World version 4").
_VOCABULARIES = (
    ("Yes", "No", "Maybe"), ("True", "False", "Neither"), ("True", "False", "Inconclusive"),
    ("Correct", "Incorrect", "Inconclusive"), ("Right", "Wrong", "Unknown"),
    ("Always", "Never", "Sometimes"), ("Guaranteed", "Impossible", "Possible"),
    ("That is true.", "That is false.", "Nobody knows."),
    ("It is true.", "It is not true.", "We cannot tell."),
)
_INDEX = {"true": 0, "false": 1, "unknown": 2}
VERDICTS = {verdict: tuple(v[i] for v in _VOCABULARIES) for verdict, i in _INDEX.items()}

# How a claim is put up for checking: {c} the claim (no final period).
_ASK = ("{c}. Is that true?", "Is it true that {c}?", "Claim: {c}. True or false?",
        "{c}. Right or wrong?", "Someone said that {c}. Is that correct?", "Q: {c}? A:",
        "Statement: {c}.", "Check this: {c}.", "{c}?", "Tell me: {c}, yes or no?")


def _person_fact(rng: random.Random, person: Person, attribute: str, pronoun: bool = False) -> str:
    """One fact in any of the corpus's frames (statement, held-out or multitask frames)."""
    frames = (STATEMENT[attribute] + ".",) * 2 + EVAL_FRAMES[attribute] + MTF_FRAMES[attribute]
    text = fill(rng.choice(frames), person, person.value(attribute))
    if pronoun and text.startswith(person.name + " "):
        text = person.pronoun.capitalize() + text[len(person.name):]
    elif pronoun and text.startswith(person.name + "'s "):
        text = person.possessive.capitalize() + text[len(person.name) + 2:]
    return text


def bio(rng: random.Random, world: World) -> str:
    person = rng.choice(world.people)
    attributes = rng.sample(ATTRIBUTES, rng.randint(2, 5))
    return " ".join(_person_fact(rng, person, a, pronoun=k > 0 and rng.random() < 0.6)
                    for k, a in enumerate(attributes))


def _claim(rng: random.Random, world: World, person: Person, attribute: str, verdict: str) -> str:
    if verdict == "unknown":
        return fill(rng.choice(UNDETERMINED), person, t=rng.choice(world.towns))
    value = person.value(attribute)
    if verdict == "false":
        value = world.other_value(rng, attribute, value)
    if rng.random() < 0.15:  # a negated claim flips the verdict
        return fill(NEGATION[attribute], person, value)
    return fill(STATEMENT[attribute], person, value)


def _verdict_of(claim_text: str, verdict: str) -> str:
    if verdict != "unknown" and " not " in claim_text:
        return "false" if verdict == "true" else "true"
    return verdict


def _say(rng: random.Random, verdict: str, vocabulary: tuple[str, str, str]) -> str:
    """The verdict in a vocabulary: a word, with or without a period, or in lower case; a sentence
    as it stands."""
    word = vocabulary[_INDEX[verdict]]
    if word.endswith("."):
        return word
    return rng.choice((word + ".", word, word.lower()))


def question(rng: random.Random, claim: str) -> str:
    """A claim put up for checking, as the corpus asks it."""
    text = rng.choice(_ASK).format(c=claim)
    return text[0].upper() + text[1:]


def _ask(rng: random.Random, claim: str, verdict: str) -> str:
    vocabulary = rng.choice(_VOCABULARIES)
    return f"{question(rng, claim)} {_say(rng, verdict, vocabulary)}"


# How a verification document ends: (rng, claim, verdict) -> the question and its verdict.
Ask = Callable[[random.Random, str, str], str]


def _draw_verdict(rng: random.Random) -> str:
    return rng.choice(("true", "false", "unknown"))


def verify_world(rng: random.Random, world: World, ask: Ask = _ask) -> str:
    """A claim about a fact of the world, judged from what the world says."""
    person = rng.choice(world.people)
    verdict = _draw_verdict(rng)
    attribute = rng.choice(ATTRIBUTES)
    claim = _claim(rng, world, person, attribute, verdict)
    return ask(rng, claim, _verdict_of(claim, verdict))


def verify_passage(rng: random.Random, world: World, ask: Ask = _ask) -> str:
    """A passage about a person, then a claim about it, judged; sometimes the correction."""
    person = rng.choice(world.people)
    attributes = rng.sample(ATTRIBUTES, rng.randint(1, 3))
    passage = " ".join(_person_fact(rng, person, a) for a in attributes)
    verdict = _draw_verdict(rng)
    attribute = rng.choice(attributes)
    claim = _claim(rng, world, person, attribute, verdict)
    verdict = _verdict_of(claim, verdict)
    lead = rng.choice(("", "From this: ", "So: ", "Given that: ", "Based on the text: "))
    text = f"{passage} {lead}{ask(rng, claim, verdict)}"
    if verdict == "false" and rng.random() < 0.3:
        text += f" {fill(STATEMENT[attribute], person, person.value(attribute))}."
    return text


def verify_story(rng: random.Random, world: World, ask: Ask = _ask) -> str:
    """A story in which an object moves, then a claim about where it is, judged."""
    story = events.make_story(rng, world, rng.randint(1, 2), rng.randint(0, 2),
                              rng.random() < 0.3)
    verdict = _draw_verdict(rng)
    if verdict == "true":
        claim = f"the {story.obj} is in the {story.final}"
    elif verdict == "false":
        claim = f"the {story.obj} is in the {rng.choice(story.places[:-1])}"
    else:
        claim = fill(rng.choice(UNDETERMINED), rng.choice(story.people), t=rng.choice(world.towns))
    text = f"{story.text} {ask(rng, claim, verdict)}"
    if verdict == "false" and rng.random() < 0.4:
        text += f" {events.state(story.obj, story.final)}"
    return text


def yes_no_question(rng: random.Random, world: World) -> str:
    """A yes/no question about a fact, answered (Q&A style)."""
    person = rng.choice(world.people)
    attribute = rng.choice(ATTRIBUTES)
    true = rng.random() < 0.5
    value = person.value(attribute) if true else world.other_value(rng, attribute,
                                                                    person.value(attribute))
    answer = _say(rng, "true" if true else "false", _VOCABULARIES[0])
    extra = "" if true or rng.random() < 0.5 else f" {fill(STATEMENT[attribute], person, person.value(attribute))}."
    return f"{fill(YES_NO[attribute], person, value)} {answer}{extra}"


def question_answer(rng: random.Random, world: World) -> str:
    """A wh-question about a fact and its one-word answer."""
    person = rng.choice(world.people)
    attribute = rng.choice(ATTRIBUTES)
    forms = (QUESTION[attribute],) + EVAL_QUESTIONS[attribute] + MTF_QUESTIONS[attribute]
    return f"{fill(rng.choice(forms), person)} {person.value(attribute)}"


def story(rng: random.Random, world: World) -> str:
    """A story in which an object moves; it ends by saying where it is, or asking."""
    told = events.make_story(rng, world, rng.randint(1, 3), rng.randint(0, 2), rng.random() < 0.3)
    seeker = rng.choice(told.people)
    ending = rng.choice((
        f"Now the {told.obj} is in the {told.final}.",
        f"Where is the {told.obj}? In the {told.final}.",
        f"Where is the {told.obj} now? {told.final}",
        f"Later {seeker.name} wanted the {told.obj}. {seeker.pronoun.capitalize()} found it in "
        f"the {told.final}.",
        f"When {seeker.name} wanted the {told.obj}, {seeker.pronoun} looked in the {told.final}",
        events.state(told.obj, told.final),
    ))
    return f"{told.text} {ending}"


def causal(rng: random.Random, world: World) -> str:
    person = rng.choice(world.people)
    _, cause, effect = events.causal_pair(rng, person)
    low_cause, low_effect = events.lower_first(cause), events.lower_first(effect)
    return rng.choice((
        f"{cause}, so {low_effect}.", f"{effect} because {low_cause}.",
        f"{cause}. As a result, {low_effect}.", f"{cause}. Then {low_effect}.",
        f"Why did it happen that {low_effect}? Because {low_cause}.",
        f"{cause}. What happened next? {effect}.", f"{effect}. The reason: {low_cause}.",
        f"{cause}. This is why {low_effect}.",
    ))


def script(rng: random.Random, world: World) -> str:
    person = rng.choice(world.people)
    activity = rng.choice(list(SCRIPTS))
    steps = SCRIPTS[activity]
    start = rng.randint(0, 2)
    stop = rng.randint(start + 2, len(steps))
    links = ("Then", "Next,", "After that,", "Then")
    parts = [f"{person.name} {steps[start]}."]
    parts += [f"{rng.choice(links)} {person.pronoun} {steps[j]}." for j in range(start + 1, stop)]
    head = rng.choice((f"{activity}.", f"{activity}:", f"How {person.name} went about it.", ""))
    return f"{head} {' '.join(parts)}".strip()


def jobs(rng: random.Random, world: World) -> str:
    person = rng.choice(world.people)
    deed = JOBS[person.job]
    other = rng.choice([p for p in world.people if p.job != person.job] or [person])
    return rng.choice((
        f"{person.name} is a {person.job}, so {person.pronoun} {deed}.",
        f"At the fair, {person.name} {deed}, as a {person.job} does.",
        f"{person.name} is a {person.job} and {other.name} is a {other.job}, so {person.name} {deed}.",
        f"{person.name} and {other.name} came to the fair, where {person.name} {deed}.",
        f"Who {deed}? The {person.job}, {person.name}.",
    ))


# Pronoun sentences (who does what); the pronoun names someone of its gender.
_COREF = ("{A} gave the {o} to {B} because {r} asked for it.", "{A} called {B} and {r} answered.",
          "{A} met {B} in {t}, and {r} smiled.", "{A} helped {B} because {r} was tired.",
          "{A} waited for {B}, but {r} did not come.", "{A} wrote to {B}, and {r} wrote back.")


def coreference(rng: random.Random, world: World) -> str:
    a, b = rng.sample(world.people, 2)
    meant = rng.choice((a, b))
    text = rng.choice(_COREF).format(A=a.name, B=b.name, o=rng.choice(events.OBJECTS),
                                     r=meant.pronoun, t=rng.choice(world.towns))
    if a.female != b.female and rng.random() < 0.5:
        text += f" Here \"{meant.pronoun}\" means {meant.name}."
    return text


def senses(rng: random.Random, world: World) -> str:
    word = rng.choice(list(SENSES))
    person = rng.choice(world.people)
    town = rng.choice(world.towns)
    (gloss_a, sentences_a), (gloss_b, sentences_b) = SENSES[word]
    if rng.random() < 0.35:
        return (f"The word {word} can mean {gloss_a}, as in: {fill(rng.choice(sentences_a), person, t=town)} "
                f"It can also mean {gloss_b}, as in: {fill(rng.choice(sentences_b), person, t=town)}")
    sense = rng.randrange(2)
    chosen = (sentences_a, sentences_b)[sense]
    first, second = rng.sample(chosen, 2)
    text = f"{fill(first, person, t=town)} {fill(second, person, t=town)}"
    if rng.random() < 0.5:
        text += f" Here {word} means {(gloss_a, gloss_b)[sense]}."
    return text


def review(rng: random.Random, world: World) -> str:
    person = rng.choice(world.people)
    good = rng.random() < 0.5
    word = rng.choice(POSITIVE if good else NEGATIVE)
    feeling = "happy" if good else "upset"
    thing = rng.choice((person.food, "meal", "play", "music"))
    text = rng.choice((f"{person.name} tried the {thing} in {person.town}. It was {word}.",
                       f"The {thing} at the inn was {word}, said {person.name}.",
                       f"What a {word} {thing}! {person.name} was {feeling}."))
    if rng.random() < 0.4:
        text += f" A {'positive' if good else 'negative'} review."
    return text


def tools(rng: random.Random, world: World) -> str:
    person = rng.choice(world.people)
    goal, way = rng.choice(TOOLS)
    return rng.choice((f"To {goal}, {way}.", f"{person.name} wanted to {goal}, so {person.pronoun} "
                       f"knew to {way}.", f"If you want to {goal}, {way}."))


def topic(rng: random.Random, world: World) -> str:
    person = rng.choice(world.people)
    name = rng.choice(list(TOPICS))
    return " ".join(fill(f, person, f=person.food, pet=person.pet, t=person.town, j=person.job)
                    for f in rng.sample(TOPICS[name], 2))


# kind -> (generator, share of the corpus in percent)
KINDS: dict[str, tuple[Callable[[random.Random, World], str], int]] = {
    "bio": (bio, 10),
    "verify_world": (verify_world, 12),
    "verify_passage": (verify_passage, 12),
    "verify_story": (verify_story, 10),
    "yes_no_question": (yes_no_question, 6),
    "question_answer": (question_answer, 6),
    "story": (story, 12),
    "causal": (causal, 8),
    "script": (script, 8),
    "jobs": (jobs, 4),
    "coreference": (coreference, 4),
    "senses": (senses, 3),
    "review": (review, 2),
    "tools": (tools, 2),
    "topic": (topic, 1),
}


def documents(world: World, seed: int, count: int) -> Iterator[str]:
    """``count`` documents, each one line; deterministic for the seed."""
    rng = random.Random(f"archobj-world/corpus/{seed}")
    names = list(KINDS)
    weights = [KINDS[k][1] for k in names]
    for _ in range(count):
        kind = rng.choices(names, weights=weights)[0]
        yield KINDS[kind][0](rng, world)
