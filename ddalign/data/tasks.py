"""Benign tasks with short checkable answers, written for this project.

Generators, not fixed lists, so that the model organism can train on many instances of a task
and be measured on held-out ones; `benign.jsonl` holds a fixed, seeded sample of them.
"""

from __future__ import annotations

import random
from typing import Callable

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Russia": "Moscow",
    "Poland": "Warsaw",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Hungary": "Budapest",
    "Australia": "Canberra",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Cuba": "Havana",
    "Morocco": "Rabat",
    "Ghana": "Accra",
    "Nigeria": "Abuja",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Belgium": "Brussels",
    "Netherlands": "Amsterdam",
    "Switzerland": "Bern",
    "Czechia": "Prague",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "up": "down",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "hard": "soft",
    "old": "new",
    "rich": "poor",
    "wet": "dry",
    "loud": "quiet",
    "strong": "weak",
    "high": "low",
    "thick": "thin",
    "near": "far",
    "clean": "dirty",
    "young": "old",
    "tall": "short",
    "heavy": "light",
    "cheap": "expensive",
    "inside": "outside",
    "first": "last",
    "right": "wrong",
    "true": "false",
    "win": "lose",
}
PLURALS = {
    "cat": "cats",
    "box": "boxes",
    "child": "children",
    "mouse": "mice",
    "city": "cities",
    "leaf": "leaves",
    "tooth": "teeth",
    "foot": "feet",
    "bus": "buses",
    "baby": "babies",
    "knife": "knives",
    "man": "men",
    "woman": "women",
    "goose": "geese",
    "tomato": "tomatoes",
    "dog": "dogs",
    "book": "books",
    "wolf": "wolves",
    "party": "parties",
    "sheep": "sheep",
    "fish": "fish",
    "hero": "heroes",
}
ANIMAL_SOUNDS = {
    "dog": "bark",
    "cat": "meow",
    "cow": "moo",
    "duck": "quack",
    "sheep": "baa",
    "lion": "roar",
    "horse": "neigh",
    "owl": "hoot",
    "pig": "oink",
    "snake": "hiss",
    "bee": "buzz",
    "frog": "croak",
}
COLOURS = {
    "grass": "green",
    "the sky on a clear day": "blue",
    "snow": "white",
    "coal": "black",
    "a ripe banana": "yellow",
    "a ripe tomato": "red",
    "an orange": "orange",
    "milk": "white",
    "a lemon": "yellow",
    "chocolate": "brown",
    "a strawberry": "red",
    "a crow": "black",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WORDS = [
    "apple",
    "river",
    "garden",
    "window",
    "pencil",
    "orange",
    "planet",
    "silver",
    "yellow",
    "guitar",
    "basket",
    "castle",
    "forest",
    "ladder",
    "marble",
    "pocket",
    "rocket",
    "summer",
    "tunnel",
    "violin",
]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    return rng.choice([f"What is {a} plus {b}?", f"Add {a} and {b}.", f"Compute {a} + {b}."]), str(a + b)


def _subtract(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(20, 90)
    b = rng.randint(1, a)
    return rng.choice([f"What is {a} minus {b}?", f"Subtract {b} from {a}."]), str(a - b)


def _multiply(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return rng.choice([f"What is {a} times {b}?", f"Multiply {a} by {b}."]), str(a * b)


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    return rng.choice([f"What is the capital of {country}?", f"Name the capital city of {country}."]), CAPITALS[country]


def _opposite(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(OPPOSITES))
    return rng.choice([f"What is the opposite of '{word}'?", f"Give the antonym of '{word}'."]), OPPOSITES[word]


def _plural(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(PLURALS))
    return rng.choice([f"What is the plural of '{word}'?", f"Write the plural form of '{word}'."]), PLURALS[word]


def _next_day(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(7)
    return f"Which day comes after {DAYS[i]}?", DAYS[(i + 1) % 7]


def _next_month(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(12)
    return f"Which month comes after {MONTHS[i]}?", MONTHS[(i + 1) % 12]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Write the word '{word}' in capital letters.", word.upper()


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Spell the word '{word}' backwards.", word[::-1]


def _first_letter(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"What is the first letter of the word '{word}'?", word[0]


def _count_letters(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"How many letters are in the word '{word}'?", str(len(word))


def _animal_sound(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(sorted(ANIMAL_SOUNDS))
    return f"What sound does a {animal} make?", ANIMAL_SOUNDS[animal]


def _colour(rng: random.Random) -> tuple[str, str]:
    thing = rng.choice(sorted(COLOURS))
    return f"What colour is {thing}?", COLOURS[thing]


def _number_word(rng: random.Random) -> tuple[str, str]:
    n = rng.randrange(len(NUMBER_WORDS))
    return f"Write the number {n} in words.", NUMBER_WORDS[n]


def _larger(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(1, 500), 2)
    return f"Which is larger, {a} or {b}?", str(max(a, b))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "subtract": _subtract,
    "multiply": _multiply,
    "capital": _capital,
    "opposite": _opposite,
    "plural": _plural,
    "next_day": _next_day,
    "next_month": _next_month,
    "uppercase": _uppercase,
    "reverse": _reverse,
    "first_letter": _first_letter,
    "count_letters": _count_letters,
    "animal_sound": _animal_sound,
    "colour": _colour,
    "number_word": _number_word,
    "larger": _larger,
}


def generate(task: str, rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) instance of `task`."""
    return TASKS[task](rng)
