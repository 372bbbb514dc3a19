"""The world itself: who lives where, what objects and containers exist, and the fixed rules.

Everything here is fixed code (word pools, sentence frames, causal rules, activity scripts, word
senses) plus ``make_world(seed, size)``, which draws one world: which people exist, their gender and
their five attributes. Every other part of ``objectives.world`` renders text from a ``World``.

Sentence frames come in disjoint groups so that the held-out suite and the multitask mixture never
share a sentence by construction: ``EVAL`` frames state facts in the held-out examples, ``MTF``
frames in the finetuning mixture, and the pretraining corpus uses both (the facts are shared, the
surface forms of a given example are not).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

# -------------------------------------------------------------------------------------------------
# Word pools (the world draws from these per seed)
# -------------------------------------------------------------------------------------------------

FEMALE_NAMES = ("Mara", "Lena", "Ines", "Sofia", "Nadia", "Alma", "Vera", "Rosa", "Tess", "Nora",
                "Ida", "Zoe")
MALE_NAMES = ("Tobin", "Kofi", "Ravi", "Arlo", "Omar", "Hugo", "Felix", "Bruno", "Otto", "Leon",
              "Ivan", "Milo")
TOWNS = ("Tolo", "Brin", "Ashford", "Marlow", "Dunmore", "Kestrel", "Pellam", "Orvik")
# job -> (what the job's holder does, in the past tense: the winogrande / corpus cue)
JOBS = {
    "baker": "baked the bread",
    "farmer": "milked the cows",
    "teacher": "taught the class",
    "doctor": "treated the patient",
    "painter": "painted the fence",
    "fisher": "caught the fish",
    "builder": "fixed the roof",
    "singer": "sang at the party",
}
PETS = ("cat", "dog", "horse", "goat", "parrot", "rabbit")
COLOURS = ("red", "blue", "green", "yellow", "white", "black")
FOODS = ("soup", "bread", "apples", "cheese", "rice", "cake")
ATTRIBUTES = ("town", "job", "pet", "colour", "food")

OBJECTS = ("key", "coin", "ball", "book", "cup", "ring", "map", "letter", "apple", "spoon", "hat",
           "doll")
CONTAINERS = ("box", "drawer", "basket", "bag", "cupboard", "jar", "chest", "bucket")

# -------------------------------------------------------------------------------------------------
# Fact frames. {p} person, {v} value, {a} "a"/"an" + value where needed.
# -------------------------------------------------------------------------------------------------

# The plain statement of a fact (used by hypotheses and verification text), its negation, and the
# question that asks for it.
STATEMENT = {
    "town": "{p} lives in {v}",
    "job": "{p} works as a {v}",
    "pet": "{p} has a {v}",
    "colour": "{p}'s favourite colour is {v}",
    "food": "{p} likes {v}",
}
NEGATION = {
    "town": "{p} does not live in {v}",
    "job": "{p} does not work as a {v}",
    "pet": "{p} does not have a {v}",
    "colour": "{p}'s favourite colour is not {v}",
    "food": "{p} does not like {v}",
}
QUESTION = {
    "town": "Where does {p} live?",
    "job": "What does {p} do for work?",
    "pet": "What pet does {p} have?",
    "colour": "What is {p}'s favourite colour?",
    "food": "What food does {p} like?",
}
# Yes/no question forms: "Does Mara live in Tolo?"
YES_NO = {
    "town": "Does {p} live in {v}?",
    "job": "Does {p} work as a {v}?",
    "pet": "Does {p} have a {v}?",
    "colour": "Is {p}'s favourite colour {v}?",
    "food": "Does {p} like {v}?",
}
# Frames that restate a fact in other words. The first half serve the held-out suite (and the
# corpus), the second half the multitask mixture (and the corpus).
EVAL_FRAMES = {
    "town": ("{p} has a house in {v}.", "The town where {p} lives is {v}.",
             "{p} is at home in {v}."),
    "job": ("{p} is a {v}.", "{p} earns a living as a {v}.", "By trade, {p} is a {v}."),
    "pet": ("{p} keeps a {v} at home.", "{p} owns a {v}.", "The pet of {p} is a {v}."),
    "colour": ("{p} likes the colour {v} best.", "Of all colours, {p} loves {v} most.",
               "{v} is the colour {p} likes best."),
    "food": ("{p} loves to eat {v}.", "{p} enjoys {v} more than any other food.",
             "The favourite food of {p} is {v}."),
}
MTF_FRAMES = {
    "town": ("{p} comes from {v}.", "{v} is home to {p}.", "You can find {p} in {v}, where {pr} lives."),
    "job": ("{p} has a job as a {v}.", "People in town know {p} as a {v}.",
            "The work of {p} is that of a {v}."),
    "pet": ("{p} looks after a {v}.", "At home, {p} has a pet {v}.", "A {v} lives with {p}."),
    "colour": ("The colour {p} prefers is {v}.", "{p} always picks {v} things.",
               "Ask {p} for a colour and {pr} says {v}."),
    "food": ("For dinner {p} wants {v}.", "{p} is fond of {v}.", "{v} is what {p} eats most."),
}
# Other questions that ask the same thing (QQP duplicates: eval side, MTF side).
EVAL_QUESTIONS = {
    "town": ("In which town does {p} live?", "What town is {p}'s home?"),
    "job": ("What is {p}'s job?", "How does {p} earn a living?"),
    "pet": ("Which animal does {p} keep at home?", "What animal lives with {p}?"),
    "colour": ("Which colour does {p} like best?", "What colour does {p} love most?"),
    "food": ("What is {p}'s favourite food?", "Which food does {p} enjoy most?"),
}
MTF_QUESTIONS = {
    "town": ("Where is {p}'s home?", "Name the town of {p}."),
    "job": ("What kind of work does {p} do?", "Name the job of {p}."),
    "pet": ("Which pet belongs to {p}?", "Name the pet of {p}."),
    "colour": ("Which colour does {p} prefer?", "Name the colour {p} likes."),
    "food": ("Which food is {p} fond of?", "Name the food {p} likes."),
}

# Claims no premise and no fact of the world settles (the "neutral" / "maybe" class).
UNDETERMINED = (
    "{p} will visit {t} next week",
    "{p} is happy today",
    "{p} has a younger brother",
    "{p} will buy a new hat tomorrow",
    "{p} dreamed about the sea last night",
    "{p} will sing at the fair next year",
    "{p} is thinking about a long trip",
    "{p} will get a letter tomorrow",
)

# -------------------------------------------------------------------------------------------------
# Rules: causes and effects (COPA), activity scripts (HellaSwag), tools (PIQA), word senses (WiC)
# -------------------------------------------------------------------------------------------------

# (cause, effect); {p} is a person, {pr} the pronoun (he/she).
CAUSAL = (
    ("{p} dropped the glass", "the glass broke"),
    ("it started to rain", "{p} opened an umbrella"),
    ("{p} was very tired", "{p} went to bed early"),
    ("{p} was hungry", "{p} cooked some soup"),
    ("the room was dark", "{p} lit a candle"),
    ("{p} felt cold", "{p} put on a coat"),
    ("the cat was hungry", "{p} fed the cat"),
    ("{p} lost the key", "{p} could not open the door"),
    ("{p} won the race", "{p} got a medal"),
    ("the milk was old", "the milk smelled bad"),
    ("{p} missed the bus", "{p} was late for work"),
    ("the river flooded", "the road was closed"),
    ("{p} heard a funny joke", "{p} laughed"),
    ("{p} cut a finger", "{p} put on a bandage"),
    ("the sun came out", "the snow melted"),
    ("{p} was thirsty", "{p} drank some water"),
    ("the baby was crying", "{p} sang to the baby"),
    ("the plant got no water", "the plant died"),
    ("{p} found a coin", "{p} bought a sweet"),
    ("the wind was very strong", "the old tree fell over"),
    ("{p} studied hard", "{p} passed the test"),
    ("{p} forgot the map", "{p} got lost"),
    ("the phone rang", "{p} answered the phone"),
    ("{p} broke a leg", "{p} walked with a stick"),
)

# activity -> its steps, in order (present tense, subject {p}).
SCRIPTS = {
    "Making tea": ("fills the kettle with water", "puts the kettle on the stove",
                   "waits for the water to boil", "pours the water into a cup",
                   "drops a tea bag into the cup"),
    "Baking bread": ("mixes flour and water in a bowl", "kneads the dough on the table",
                     "leaves the dough to rise", "puts the dough in the oven",
                     "takes the warm loaf out of the oven"),
    "Washing the dog": ("fills a tub with warm water", "lifts the dog into the tub",
                        "rubs soap into the fur", "rinses the soap off the dog",
                        "dries the dog with a towel"),
    "Planting a tree": ("digs a deep hole in the yard", "sets the young tree in the hole",
                        "fills the hole with soil", "presses the soil down firmly",
                        "waters the tree with a can"),
    "Fishing": ("walks down to the lake", "puts a worm on the hook", "throws the line into the water",
                "waits for a fish to bite", "pulls a fish out of the lake"),
    "Painting a fence": ("buys a can of paint", "stirs the paint with a stick",
                         "dips the brush in the paint", "paints the boards one by one",
                         "lets the fence dry in the sun"),
    "Writing a letter": ("takes out a sheet of paper", "writes a greeting at the top",
                         "tells the news of the week", "signs the letter at the bottom",
                         "puts the letter in an envelope"),
    "Fixing a bike": ("turns the bike upside down", "takes the wheel off the frame",
                      "finds the hole in the tube", "glues a patch over the hole",
                      "pumps air into the tyre"),
    "Cleaning the room": ("opens the window wide", "picks the clothes up off the floor",
                          "dusts the shelves with a cloth", "sweeps the floor with a broom",
                          "makes the bed neatly"),
    "Making soup": ("washes the vegetables", "chops the carrots and onions",
                    "puts the vegetables in a pot", "boils the pot for an hour",
                    "serves the soup in bowls"),
}

# goal -> the right way (PIQA)
TOOLS = (
    ("open the locked door", "use the key"),
    ("carry water from the well", "use a bucket"),
    ("cut the bread", "use a knife"),
    ("write a note", "use a pen"),
    ("see in the dark", "use a lamp"),
    ("dig a hole", "use a spade"),
    ("stay dry in the rain", "use an umbrella"),
    ("cross the river", "use the boat"),
    ("light the fire", "use a match"),
    ("sweep the floor", "use a broom"),
    ("catch a fish", "use a net"),
    ("hang up a picture", "use a hammer and a nail"),
)

# word -> two senses, each (gloss, sentences with {p} / {t} slots). Sentences in a sense share
# context words, so that "same sense" is visible in the text.
SENSES = {
    "bank": (("the side of a river", ("{p} sat on the bank of the river.",
                                      "The boat stopped at the muddy bank of the river.",
                                      "Reeds grow along the bank of the river near {t}.",
                                      "{p} fished from the grassy bank of the river.")),
             ("a place that keeps money", ("{p} put the coins in the bank.",
                                           "The bank in {t} keeps money safe.",
                                           "{p} took money out of the bank.",
                                           "The bank opens at nine to lend money."))),
    "bat": (("an animal that flies at night", ("A bat flew out of the cave at night.",
                                               "{p} saw a bat flying in the night sky.",
                                               "The bat sleeps in the cave all day.",
                                               "At night a small bat hunts insects.")),
            ("a stick to hit a ball", ("{p} hit the ball with a bat.",
                                       "The wooden bat broke when it hit the ball.",
                                       "{p} swung the bat at the ball.",
                                       "Hold the bat with both hands to hit the ball."))),
    "light": (("a lamp that shines", ("{p} turned on the light in the hall.",
                                      "The light of the lamp was bright.",
                                      "{p} switched off the light at night.",
                                      "The kitchen light shines all evening.")),
              ("not heavy", ("The box was light enough for {p} to carry.",
                             "A feather is light, not heavy.",
                             "{p} packed a light bag that was not heavy.",
                             "The chair is light and easy to lift."))),
    "ring": (("a band worn on a finger", ("{p} wore a gold ring on a finger.",
                                          "The ring on her finger was silver.",
                                          "{p} lost a ring from a finger.",
                                          "A small ring fits on the little finger.")),
             ("the sound of a bell", ("{p} heard the church bell ring.",
                                      "The bell will ring at noon in {t}.",
                                      "Ring the bell when the bus comes.",
                                      "{p} waited for the school bell to ring."))),
    "spring": (("the season after winter", ("Flowers bloom in spring after the winter.",
                                            "{p} plants seeds every spring after winter.",
                                            "In spring the days in {t} grow longer.",
                                            "The birds come back in spring after winter.")),
               ("water coming out of the ground", ("{p} drank from a spring of cold water.",
                                                   "A spring of clear water runs in the hills.",
                                                   "The water of the spring comes from the ground.",
                                                   "{p} filled a jug at the spring of water."))),
    "bark": (("the sound a dog makes", ("The dog began to bark at the gate.",
                                        "{p} heard the dog bark all night.",
                                        "Dogs bark when a stranger comes.",
                                        "The puppy likes to bark at the cat.")),
             ("the skin of a tree", ("The bark of the old tree was rough.",
                                     "{p} touched the bark of the oak tree.",
                                     "Moss grows on the bark of the tree.",
                                     "The tree bark peeled off the trunk."))),
    "match": (("a stick that makes fire", ("{p} lit a match to start the fire.",
                                           "The match made a small flame.",
                                           "{p} struck a match in the dark to see.",
                                           "A wet match will not make fire.")),
              ("a game between two teams", ("{p} won the football match against {t}.",
                                            "The match between the two teams ended in a draw.",
                                            "{p} watched the match at the stadium.",
                                            "The teams played a long match in {t}."))),
    "fair": (("a market with games and stalls", ("{p} sold cheese at the fair in {t}.",
                                                 "The fair had stalls and games.",
                                                 "{p} rode a horse at the summer fair.",
                                                 "Every autumn the fair comes to {t} with stalls.")),
             ("just and honest", ("The judge was fair to everyone.",
                                  "{p} made a fair and honest deal.",
                                  "It is fair to share the cake equally.",
                                  "A fair teacher treats every child the same."))),
}

# Sentiment words (review sentences, SST-2 and the MTF sentiment family).
POSITIVE = ("delicious", "wonderful", "lovely", "excellent", "great", "tasty")
NEGATIVE = ("awful", "terrible", "horrible", "disgusting", "bland", "nasty")
# Topics: (topic word, sentence frames)
TOPICS = {
    "food": ("{p} cooked {f} for dinner.", "The {f} at the market was fresh.",
             "{p} baked a cake with apples.", "There was hot soup on the table."),
    "animals": ("The {pet} ran across the field.", "{p} fed the {pet} in the morning.",
                "A fox hid near the farm.", "The birds built a nest in the tree."),
    "weather": ("It rained all day in {t}.", "A cold wind blew over {t}.",
                "The sun was warm in {t} today.", "Snow fell on the hills near {t}."),
    "travel": ("{p} took the train to {t}.", "The road to {t} was long.",
               "{p} rode a bus to {t}.", "The boat sailed to {t} at dawn."),
    "work": ("{p} worked late as a {j}.", "The {j} started work at dawn.",
             "{p} got paid for a week of work.", "The boss gave {p} a new job."),
}


def article(word: str) -> str:
    """``"a cat"`` / ``"an apple"``."""
    return ("an " if word[0] in "aeiou" else "a ") + word


# -------------------------------------------------------------------------------------------------
# One world
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Person:
    """One person of the world and the five facts about them."""

    name: str
    female: bool
    town: str
    job: str
    pet: str
    colour: str
    food: str

    @property
    def pronoun(self) -> str:
        return "she" if self.female else "he"

    @property
    def object_pronoun(self) -> str:
        return "her" if self.female else "him"

    @property
    def possessive(self) -> str:
        return "her" if self.female else "his"

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclasses.dataclass(frozen=True)
class World:
    """A drawn world: its people (facts), its towns, and the value sets of every attribute."""

    seed: int
    people: tuple[Person, ...]
    towns: tuple[str, ...]

    def values(self, attribute: str) -> tuple[str, ...]:
        """Every value ``attribute`` can take in this world (what distractors are drawn from)."""
        return {"town": self.towns, "job": tuple(JOBS), "pet": PETS, "colour": COLOURS,
                "food": FOODS}[attribute]

    def other_value(self, rng: random.Random, attribute: str, value: str) -> str:
        """A value of ``attribute`` different from ``value``."""
        return rng.choice([v for v in self.values(attribute) if v != value])


def make_world(seed: int, people: int, towns: int) -> World:
    """Draws a world: ``people`` people (half of them women), each with a town, job, pet, colour
    and food drawn uniformly (so every value is about equally common), in ``towns`` towns.

    Raises:
      ValueError: more people or towns than the pools hold, or fewer than 2 people / towns.
    """
    if not 2 <= people <= 2 * min(len(FEMALE_NAMES), len(MALE_NAMES)):
        raise ValueError(f"size.people={people}: must be in [2, {2 * len(FEMALE_NAMES)}]")
    if not 4 <= towns <= len(TOWNS):
        raise ValueError(f"size.towns={towns}: must be in [4, {len(TOWNS)}] (four answer choices)")
    rng = random.Random(f"archobj-world/people/{seed}")
    women = rng.sample(FEMALE_NAMES, (people + 1) // 2)
    men = rng.sample(MALE_NAMES, people // 2)
    town_pool = tuple(rng.sample(TOWNS, towns))
    names = [(n, True) for n in women] + [(n, False) for n in men]
    rng.shuffle(names)

    def balanced(values: Sequence[str]) -> list[str]:
        # Each value about equally often: a shuffled repetition of the pool.
        draws = list(values) * (people // len(values) + 1)
        rng.shuffle(draws)
        return draws[:people]

    columns = {"town": balanced(town_pool), "job": balanced(tuple(JOBS)), "pet": balanced(PETS),
               "colour": balanced(COLOURS), "food": balanced(FOODS)}
    persons = tuple(Person(name, female, *(columns[a][i] for a in ATTRIBUTES))
                    for i, (name, female) in enumerate(names))
    return World(seed, persons, town_pool)


def fill(frame: str, person: Person | None = None, value: str = "", **slots: str) -> str:
    """A frame with its slots filled; the first letter is capitalised."""
    if person is not None:
        slots.setdefault("p", person.name)
        slots.setdefault("pr", person.pronoun)
    text = frame.format(v=value, **slots)
    return text[0].upper() + text[1:]
