"""Provided (given complete, not graded): lesson 13's instruction set, small enough to read in one sitting.

120 hand-written instruction/response pairs in seven families (opposites, plurals, additions,
colours, capitals, animal sounds, spelling backwards), plus five rephrased copies of earlier pairs
(``NEAR_DUPLICATES``): the same answer under another wording, the kind of leak a random
train/validation split lets through. Nothing is downloaded. ``conversations()`` turns the pairs into
trl's conversational prompt/completion rows.
"""

from __future__ import annotations

SYSTEM = "You are a tiny helpful assistant. Answer in one short sentence."

PAIRS: list[tuple[str, str]] = [
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of big?", "The opposite of big is small."),
    ("What is the opposite of fast?", "The opposite of fast is slow."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("What is the opposite of day?", "The opposite of day is night."),
    ("What is the opposite of open?", "The opposite of open is closed."),
    ("What is the opposite of happy?", "The opposite of happy is sad."),
    ("What is the opposite of old?", "The opposite of old is new."),
    ("What is the opposite of wet?", "The opposite of wet is dry."),
    ("What is the opposite of light?", "The opposite of light is dark."),
    ("What is the opposite of full?", "The opposite of full is empty."),
    ("What is the opposite of early?", "The opposite of early is late."),
    ("What is the opposite of hard?", "The opposite of hard is soft."),
    ("What is the opposite of loud?", "The opposite of loud is quiet."),
    ("What is the opposite of tall?", "The opposite of tall is short."),
    ("What is the opposite of rich?", "The opposite of rich is poor."),
    ("What is the opposite of strong?", "The opposite of strong is weak."),
    ("What is the opposite of clean?", "The opposite of clean is dirty."),
    ("What is the opposite of near?", "The opposite of near is far."),
    ("What is the opposite of first?", "The opposite of first is last."),
    ("What is the plural of cat?", "The plural of cat is cats."),
    ("What is the plural of dog?", "The plural of dog is dogs."),
    ("What is the plural of box?", "The plural of box is boxes."),
    ("What is the plural of child?", "The plural of child is children."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("What is the plural of foot?", "The plural of foot is feet."),
    ("What is the plural of tooth?", "The plural of tooth is teeth."),
    ("What is the plural of city?", "The plural of city is cities."),
    ("What is the plural of leaf?", "The plural of leaf is leaves."),
    ("What is the plural of bus?", "The plural of bus is buses."),
    ("What is the plural of man?", "The plural of man is men."),
    ("What is the plural of sheep?", "The plural of sheep is sheep."),
    ("What is the plural of fish?", "The plural of fish is fish."),
    ("What is the plural of baby?", "The plural of baby is babies."),
    ("What is the plural of knife?", "The plural of knife is knives."),
    ("What is the plural of woman?", "The plural of woman is women."),
    ("What is the plural of goose?", "The plural of goose is geese."),
    ("What is the plural of day?", "The plural of day is days."),
    ("What is the plural of toy?", "The plural of toy is toys."),
    ("What is the plural of church?", "The plural of church is churches."),
    ("What is 2 plus 3?", "2 plus 3 is 5."),
    ("What is 1 plus 1?", "1 plus 1 is 2."),
    ("What is 4 plus 5?", "4 plus 5 is 9."),
    ("What is 6 plus 2?", "6 plus 2 is 8."),
    ("What is 3 plus 3?", "3 plus 3 is 6."),
    ("What is 7 plus 1?", "7 plus 1 is 8."),
    ("What is 5 plus 5?", "5 plus 5 is 10."),
    ("What is 8 plus 4?", "8 plus 4 is 12."),
    ("What is 9 plus 0?", "9 plus 0 is 9."),
    ("What is 2 plus 7?", "2 plus 7 is 9."),
    ("What is 6 plus 6?", "6 plus 6 is 12."),
    ("What is 4 plus 3?", "4 plus 3 is 7."),
    ("What is 1 plus 8?", "1 plus 8 is 9."),
    ("What is 3 plus 9?", "3 plus 9 is 12."),
    ("What is 7 plus 7?", "7 plus 7 is 14."),
    ("What is 5 plus 2?", "5 plus 2 is 7."),
    ("What is 8 plus 8?", "8 plus 8 is 16."),
    ("What is 0 plus 6?", "0 plus 6 is 6."),
    ("What is 9 plus 9?", "9 plus 9 is 18."),
    ("What is 6 plus 4?", "6 plus 4 is 10."),
    ("What color is the sky?", "The sky is blue."),
    ("What color is grass?", "Grass is green."),
    ("What color is snow?", "Snow is white."),
    ("What color is coal?", "Coal is black."),
    ("What color is a banana?", "A banana is yellow."),
    ("What color is a tomato?", "A tomato is red."),
    ("What color is an orange?", "An orange is orange."),
    ("What color is a lemon?", "A lemon is yellow."),
    ("What color is milk?", "Milk is white."),
    ("What color is a crow?", "A crow is black."),
    ("What color is the sea?", "The sea is blue."),
    ("What color is a leaf?", "A leaf is green."),
    ("What color is a strawberry?", "A strawberry is red."),
    ("What color is chocolate?", "Chocolate is brown."),
    ("What color is a carrot?", "A carrot is orange."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
    ("What is the capital of Peru?", "The capital of Peru is Lima."),
    ("What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("What is the capital of Greece?", "The capital of Greece is Athens."),
    ("What is the capital of India?", "The capital of India is New Delhi."),
    ("What is the capital of Chile?", "The capital of Chile is Santiago."),
    ("What is the capital of Poland?", "The capital of Poland is Warsaw."),
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
    ("What sound does a cow make?", "A cow says moo."),
    ("What sound does a dog make?", "A dog says woof."),
    ("What sound does a cat make?", "A cat says meow."),
    ("What sound does a duck make?", "A duck says quack."),
    ("What sound does a sheep make?", "A sheep says baa."),
    ("What sound does a pig make?", "A pig says oink."),
    ("What sound does a wolf make?", "A wolf says howl."),
    ("What sound does a horse make?", "A horse says neigh."),
    ("What sound does a lion make?", "A lion says roar."),
    ("What sound does a snake make?", "A snake says hiss."),
    ("What sound does a bee make?", "A bee says buzz."),
    ("What sound does a frog make?", "A frog says croak."),
    ("What sound does a mouse make?", "A mouse says squeak."),
    ("What sound does a crow make?", "A crow says caw."),
    ("What sound does a goat make?", "A goat says bleat."),
    ("Spell cat backwards.", "cat backwards is tac."),
    ("Spell dog backwards.", "dog backwards is god."),
    ("Spell sun backwards.", "sun backwards is nus."),
    ("Spell map backwards.", "map backwards is pam."),
    ("Spell top backwards.", "top backwards is pot."),
    ("Spell star backwards.", "star backwards is rats."),
    ("Spell milk backwards.", "milk backwards is klim."),
    ("Spell frog backwards.", "frog backwards is gorf."),
    ("Spell lamp backwards.", "lamp backwards is pmal."),
    ("Spell rain backwards.", "rain backwards is niar."),
    ("Spell tree backwards.", "tree backwards is eert."),
    ("Spell boat backwards.", "boat backwards is taob."),
    ("Spell fish backwards.", "fish backwards is hsif."),
    ("Spell moon backwards.", "moon backwards is noom."),
    ("Spell book backwards.", "book backwards is koob."),
]

# Rephrased copies of five pairs above, same answers: a random split puts some of them in validation.
NEAR_DUPLICATES: list[tuple[str, str]] = [
    ("Tell me the opposite of hot.", "The opposite of hot is cold."),
    ("Give the plural of mouse.", "The plural of mouse is mice."),
    ("Add 4 and 5.", "4 plus 5 is 9."),
    ("Name the capital of Japan.", "The capital of Japan is Tokyo."),
    ("Which sound does a cow make?", "A cow says moo."),
]


def conversations(pairs: list[tuple[str, str]] | None = None, system: bool = False) -> list[dict]:
    """The pairs as trl's conversational prompt/completion rows.

    Each row is ``{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant",
    "content": a}]}`` (with a system message first in the prompt when ``system``). ``pairs``
    defaults to ``PAIRS + NEAR_DUPLICATES``.
    """
    rows = []
    for question, answer in PAIRS + NEAR_DUPLICATES if pairs is None else pairs:
        prompt = [{"role": "user", "content": question}]
        if system:
            prompt = [{"role": "system", "content": SYSTEM}, *prompt]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return rows
