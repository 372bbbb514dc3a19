"""Things that happen in the world: stories in which an object changes place, causes and effects,
activity scripts. Each helper draws from an ``rng`` and returns plain sentences, so that the corpus,
the multitask mixture and the held-out suite all tell the same kind of event in their own words.
"""

from __future__ import annotations

import dataclasses
import random

from objectives.world.facts import CAUSAL, CONTAINERS, OBJECTS, SCRIPTS, Person, World, fill

# How a story tells that someone put an object somewhere / moved it. {p} person, {o} object,
# {a} from, {b} to.
PUT = ("{p} put the {o} in the {b}.", "{p} placed the {o} in the {b}.",
       "{p} left the {o} in the {b}.")
MOVE = ("{p} moved the {o} from the {a} to the {b}.",
        "{p} took the {o} out of the {a} and put it in the {b}.",
        "Then {p} moved the {o} from the {a} to the {b}.",
        "{p} carried the {o} from the {a} to the {b}.")
ASIDE = ("{p} sat down by the window.", "{p} went out for a walk.", "{p} came into the room.",
         "{p} made a cup of tea.", "{p} read a book for a while.", "{p} looked out at the rain.")


@dataclasses.dataclass(frozen=True)
class Story:
    """A short story in which one object is put somewhere and then moved.

    Attributes:
      sentences: the story, one sentence each.
      obj: the object that moves.
      places: where it was, in order (``places[-1]`` is where it is at the end).
      people: the people who appear (the first one put the object down).
    """

    sentences: tuple[str, ...]
    obj: str
    places: tuple[str, ...]
    people: tuple[Person, ...]

    @property
    def final(self) -> str:
        return self.places[-1]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def make_story(rng: random.Random, world: World, moves: int, asides: int = 0,
               other_object: bool = False) -> Story:
    """A story: one object put in a container, then moved ``moves`` times, with ``asides``
    unrelated sentences and (``other_object``) a second object put somewhere else, as distractors.
    """
    obj, other = rng.sample(OBJECTS, 2)
    places = rng.sample(CONTAINERS, moves + 2)
    spare = places.pop()  # where the distractor object goes
    people = rng.sample(world.people, min(3, len(world.people)))
    events = [fill(rng.choice(PUT), people[0], p=people[0].name, o=obj, b=places[0])]
    for k in range(moves):
        mover = rng.choice(people)
        events.append(fill(rng.choice(MOVE), mover, p=mover.name, o=obj, a=places[k],
                           b=places[k + 1]))
    extras = [fill(rng.choice(ASIDE), p, p=p.name) for p in rng.sample(people, min(asides, 3))]
    if other_object:
        extras.append(fill(rng.choice(PUT), people[-1], p=people[-1].name, o=other, b=spare))
    # Asides go anywhere after the first sentence; the order of the moves is kept.
    for extra in extras:
        events.insert(rng.randint(1, len(events)), extra)
    return Story(tuple(events), obj, tuple(places[:moves + 1]), tuple(people))


def state(obj: str, place: str) -> str:
    """The plain statement of where an object is: ``The key is in the drawer.``"""
    return f"The {obj} is in the {place}."


def causal_pair(rng: random.Random, person: Person, index: int | None = None
                ) -> tuple[int, str, str]:
    """(rule index, cause, effect) of one causal rule, filled with ``person``; no final period."""
    index = rng.randrange(len(CAUSAL)) if index is None else index
    cause, effect = CAUSAL[index]
    return index, fill(cause, person), fill(effect, person)


def lower_first(text: str) -> str:
    """``The glass broke`` -> ``the glass broke`` (names stay capitalised)."""
    first = text.split(" ", 1)[0]
    if first in ("The", "It", "A", "Then"):
        return text[0].lower() + text[1:]
    return text


def script_steps(activity: str, person: Person) -> list[str]:
    """The activity's steps as sentences about ``person`` (no final period)."""
    return [f"{person.name} {step}" for step in SCRIPTS[activity]]
