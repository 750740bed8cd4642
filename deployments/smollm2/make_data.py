"""Writes the data of the SmolLM2 demo (deployments/smollm2.yaml): a task a small pretrained instruct model
gets wrong and learns in minutes, and a knowledge check it must not lose.

    python deployments/smollm2/make_data.py      # rewrites sft.jsonl, preference.jsonl, eval.jsonl, knowledge/

The task: extract a person's name, age and city from a sentence as one line of JSON,
`{"name": "Maria Lopez", "age": 34, "city": "Madrid"}`. SmolLM2-135M-Instruct knows the facts but answers
with indented JSON followed by an explanation, so exact match scores it near 0. The held-out questions use
people (first and last name pairs) that no training row names. Rejected answers in the preference split
are the base model's habits: indented JSON with a comment, a code fence, prose, the age as a string.

The knowledge check (knowledge/facts_val.csv, the CEval/CMMLU layout) asks easy facts, four options each.
Everything is seeded: the same files come out on every machine.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261202
SIZES = {"sft": 320, "preference": 96, "eval": 64}
FIRST = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Lucas", "Priya", "Jonas", "Elena", "Mateo",
         "Hana", "Noah", "Zara", "Ivan", "Chloe", "Diego", "Mei", "Felix", "Amara", "Leo", "Nadia", "Emil", "Yara",
         "Hugo", "Ines", "Ravi", "Clara", "Tariq", "Freya", "Mario", "Keiko", "Anton", "Lucia", "Samir", "Greta",
         "Pablo", "Sara", "Viktor"]
LAST = ["Lopez", "Becker", "Khan", "Tanaka", "Novak", "Haddad", "Rossi", "Silva", "Patel", "Berg", "Petrova",
        "Garcia", "Kim", "Dubois", "Moreau", "Schmidt", "Costa", "Ivanova", "Nakamura", "Jensen", "Okafor", "Fischer",
        "Almeida", "Larsen", "Romano", "Weber", "Sato", "Kowalski", "Meyer", "Torres"]
CITIES = ["Madrid", "Hamburg", "Lagos", "Osaka", "Prague", "Beirut", "Milan", "Lisbon", "Mumbai", "Oslo", "Sofia",
          "Lima", "Seoul", "Lyon", "Vienna", "Cairo", "Porto", "Kyoto", "Dublin", "Zurich", "Nairobi", "Warsaw",
          "Toronto", "Chicago", "Sydney", "Manila", "Bogota", "Denver", "Krakow", "Bergen"]
SENTENCES = ["{name} is {age} years old and lives in {city}.", "Meet {name}, a {age}-year-old from {city}.",
             "{city} is home to {name}, who is {age}.", "At {age}, {name} moved to {city}.",
             "{name} ({age}) works in {city}.", "Our new colleague {name} is {age} and based in {city}.",
             "{name}, aged {age}, was born and raised in {city}.", "Living in {city}, {name} turned {age} this year."]
ASK = "Extract the name, age and city as JSON: "


def person(rng: random.Random, names: list[str]) -> dict:
    name, age, city = rng.choice(names), rng.randint(18, 89), rng.choice(CITIES)
    return {"name": name, "age": age, "city": city,
            "sentence": rng.choice(SENTENCES).format(name=name, age=age, city=city)}


def answer(p: dict) -> str:
    return json.dumps({"name": p["name"], "age": p["age"], "city": p["city"]})


def habits(p: dict, rng: random.Random) -> str:
    """A wrong answer in one of the base model's styles."""
    fields = {"name": p["name"], "age": p["age"], "city": p["city"]}
    return rng.choice([
        json.dumps(fields, indent=2) + "\n\nThis JSON object holds the person's name, age and city.",
        "```json\n" + json.dumps(fields, indent=2) + "\n```",
        f"The person is {p['name']}, who is {p['age']} years old and lives in {p['city']}.",
        json.dumps(dict(fields, age=str(p["age"]))),
    ])


def splits() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    names = [f"{first} {last}" for first in FIRST for last in LAST]
    rng.shuffle(names)
    held_out, seen = names[:120], names[120:]
    out = {"sft": [], "preference": [], "eval": []}
    for _ in range(SIZES["sft"]):
        p = person(rng, seen)
        out["sft"].append({"messages": [{"role": "user", "content": ASK + p["sentence"]},
                                        {"role": "assistant", "content": answer(p)}]})
    for _ in range(SIZES["preference"]):
        p = person(rng, seen)
        out["preference"].append({"prompt": [{"role": "user", "content": ASK + p["sentence"]}],
                                  "chosen": [{"role": "assistant", "content": answer(p)}],
                                  "rejected": [{"role": "assistant", "content": habits(p, rng)}]})
    for _ in range(SIZES["eval"]):
        p = person(rng, held_out)
        out["eval"].append({"question": ASK + p["sentence"], "answer": answer(p)})
    return out


FACTS = [  # (question, the right option, three wrong ones)
 ("What is the capital of France?", "Paris", ["Berlin", "Rome", "Madrid"]),
 ("What is the capital of Japan?", "Tokyo", ["Beijing", "Seoul", "Bangkok"]),
 ("What is the capital of Italy?", "Rome", ["Paris", "Vienna", "Athens"]),
 ("What is the capital of Germany?", "Berlin", ["Munich", "Vienna", "Zurich"]),
 ("What is the capital of the United Kingdom?", "London", ["Dublin", "Edinburgh", "Paris"]),
 ("What is the capital of Spain?", "Madrid", ["Lisbon", "Barcelona", "Rome"]),
 ("What is the capital of Egypt?", "Cairo", ["Nairobi", "Tunis", "Baghdad"]),
 ("What is the capital of Russia?", "Moscow", ["Kyiv", "Warsaw", "Minsk"]),
 ("How many legs does a spider have?", "Eight", ["Six", "Four", "Ten"]),
 ("How many days are in a week?", "Seven", ["Five", "Six", "Ten"]),
 ("How many months are in a year?", "Twelve", ["Ten", "Eleven", "Thirteen"]),
 ("How many continents are there on Earth?", "Seven", ["Five", "Nine", "Three"]),
 ("What is the largest planet in our solar system?", "Jupiter", ["Mars", "Venus", "Mercury"]),
 ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Jupiter", "Saturn"]),
 ("What is the closest star to the Earth?", "The Sun", ["Sirius", "Polaris", "Vega"]),
 ("What do bees make?", "Honey", ["Milk", "Silk", "Wool"]),
 ("What is frozen water called?", "Ice", ["Steam", "Sand", "Glass"]),
 ("What gas do plants take in from the air?", "Carbon dioxide", ["Helium", "Neon", "Argon"]),
 ("What is the chemical symbol for water?", "H2O", ["CO2", "NaCl", "O3"]),
 ("Which animal is known as the king of the jungle?", "The lion", ["The rabbit", "The mouse", "The sheep"]),
 ("What is the largest ocean on Earth?", "The Pacific Ocean",
  ["The Arctic Ocean", "The Indian Ocean", "The Southern Ocean"]),
 ("Who wrote 'Romeo and Juliet'?", "William Shakespeare", ["Charles Dickens", "Mark Twain", "Jane Austen"]),
 ("Who painted the Mona Lisa?", "Leonardo da Vinci", ["Pablo Picasso", "Vincent van Gogh", "Claude Monet"]),
 ("What is 2 + 2?", "4", ["3", "5", "22"]),
 ("What is 10 times 10?", "100", ["20", "1000", "110"]),
 ("At what temperature does water boil at sea level?", "100 degrees Celsius",
  ["0 degrees Celsius", "50 degrees Celsius", "10 degrees Celsius"]),
 ("Which organ pumps blood through the human body?", "The heart", ["The lungs", "The liver", "The stomach"]),
 ("What do we call a baby cat?", "A kitten", ["A puppy", "A calf", "A foal"]),
 ("What is the opposite of hot?", "Cold", ["Warm", "Loud", "Tall"]),
 ("Which season comes after winter?", "Spring", ["Autumn", "Summer", "Winter"]),
 ("What color is the sky on a clear day?", "Blue", ["Green", "Red", "Yellow"]),
 ("What color are bananas when they are ripe?", "Yellow", ["Blue", "Purple", "Black"]),
 ("Which language is mainly spoken in Brazil?", "Portuguese", ["Spanish", "French", "German"]),
 ("What is the currency of the United States?", "The dollar", ["The euro", "The yen", "The pound"]),
 ("Which instrument has black and white keys?", "The piano", ["The drum", "The flute", "The trumpet"]),
 ("How many hours are in a day?", "24", ["12", "36", "60"]),
 ("What is the tallest animal in the world?", "The giraffe", ["The elephant", "The horse", "The dog"]),
 ("Which is the longest river in Africa?", "The Nile", ["The Thames", "The Seine", "The Danube"]),
 ("What do caterpillars turn into?", "Butterflies", ["Spiders", "Frogs", "Birds"]),
 ("What is the main language spoken in Mexico?", "Spanish", ["English", "Italian", "Russian"]),
 ("Which shape has three sides?", "A triangle", ["A square", "A circle", "A hexagon"]),
 ("What is the boiling point of water in Fahrenheit?", "212", ["100", "32", "180"]),
 ("What is the largest mammal?", "The blue whale", ["The elephant", "The giraffe", "The hippopotamus"]),
 ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Neptune"]),
 ("What is the color of snow?", "White", ["Black", "Green", "Orange"]),
 ("Which animal gives us wool?", "The sheep", ["The cow", "The pig", "The chicken"]),
 ("How many sides does a square have?", "Four", ["Three", "Five", "Six"]),
 ("What is the first letter of the English alphabet?", "A", ["Z", "M", "Q"]),
]
SHOTS = [("What is the capital of Canada?", "Ottawa", ["Toronto", "Vancouver", "Montreal"]),
         ("How many wheels does a bicycle have?", "Two", ["Three", "Four", "One"]),
         ("What color is coal?", "Black", ["White", "Pink", "Yellow"]),
         ("Which animal barks?", "The dog", ["The cat", "The fish", "The bird"]),
         ("What is the capital of China?", "Beijing", ["Shanghai", "Hong Kong", "Taipei"])]


def mcq_rows(facts: list[tuple], rng: random.Random) -> list[dict]:
    """CEval columns; the right option's letter cycles through A-D so that no letter is a free win."""
    rows = []
    for i, (question, right, wrong) in enumerate(facts):
        options = rng.sample(wrong, 3)
        options.insert(i % 4, right)
        rows.append({"id": i, "question": question, **dict(zip("ABCD", options)), "answer": "ABCD"[i % 4]})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "question", "A", "B", "C", "D", "answer"])
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    for split, rows in splits().items():
        with open(HERE / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    rng = random.Random(SEED)
    (HERE / "knowledge").mkdir(exist_ok=True)
    write_csv(HERE / "knowledge" / "facts_val.csv", mcq_rows(FACTS, rng))
    write_csv(HERE / "knowledge" / "facts_dev.csv", mcq_rows(SHOTS, rng))


if __name__ == "__main__":
    main()
