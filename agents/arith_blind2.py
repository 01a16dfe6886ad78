"""Blind evaluation set 2 of arithmetic word-problem templates.

Written on 2026-12-01 by a helper who read no training template, as a blind set for the next
adapter. No training mix may use or paraphrase it.

Each template takes a ``random.Random`` and returns ``(question, expression)``: a plain-English
word problem asking for exactly one number, and a calculator expression over exactly the numbers
written in the question (plus ``100`` for a percentage) whose value is the answer.
"""
from __future__ import annotations

import random


def _b2_stadium_seats(rng: random.Random) -> tuple[str, str]:
    """Shape: a * b + c."""
    sections = rng.randint(24, 96)
    seats = rng.randint(120, 480)
    standing = rng.randint(150, 2500)
    question = (f"A football stadium has {sections} seating sections with {seats} seats in each, "
                f"and there is also room for {standing} standing fans. "
                f"How many spectators can the stadium hold in total?")
    return question, f"{sections} * {seats} + {standing}"


def _b2_school_trip(rng: random.Random) -> tuple[str, str]:
    """Shape: a + b * c (the rate is given after the count)."""
    coach = rng.randint(300, 1800)
    students = rng.randint(45, 380)
    ticket = rng.randint(12, 48)
    question = (f"Hiring a coach for a school trip costs {coach} dollars. "
                f"On top of that, {students} students each need a museum ticket that costs {ticket} dollars. "
                f"What is the total cost of the trip in dollars?")
    return question, f"{coach} + {students} * {ticket}"


def _b2_field_fencing(rng: random.Random) -> tuple[str, str]:
    """Shape: (a + b) * c."""
    first = rng.randint(180, 950)
    second = rng.randint(180, 950)
    price = rng.randint(11, 39)
    question = (f"A farmer needs {first} metres of fence for the north field and {second} metres "
                f"for the south field. Fencing costs {price} dollars per metre. "
                f"How many dollars will the farmer spend on fencing?")
    return question, f"({first} + {second}) * {price}"


def _b2_returned_crates(rng: random.Random) -> tuple[str, str]:
    """Shape: (a - b) * c."""
    crates = rng.randint(400, 2400)
    damaged = rng.randint(15, 180)
    bottles = rng.randint(12, 48)
    question = (f"A warehouse received {crates} crates of juice, but {damaged} of them arrived damaged "
                f"and were sent back. Every crate holds {bottles} bottles. "
                f"How many bottles from the crates that were kept can be put on the shelves?")
    return question, f"({crates} - {damaged}) * {bottles}"


def _b2_wages_after_lunch(rng: random.Random) -> tuple[str, str]:
    """Shape: a * b - c * d."""
    rate = rng.randint(18, 45)
    hours = rng.randint(120, 190)
    lunch = rng.randint(9, 19)
    days = rng.randint(18, 23)
    question = (f"Priya worked {hours} hours last month at {rate} dollars per hour. "
                f"She bought lunch on {days} working days for {lunch} dollars each time. "
                f"How many dollars of her pay were left over after paying for lunches?")
    return question, f"{rate} * {hours} - {lunch} * {days}"


def _b2_tile_order(rng: random.Random) -> tuple[str, str]:
    """Shape: a * b + c * d."""
    floor = rng.randint(60, 420)
    floor_price = rng.randint(11, 35)
    wall = rng.randint(40, 380)
    wall_price = rng.randint(10, 28)
    question = (f"For a bathroom renovation, a builder orders {floor} floor tiles costing {floor_price} dollars each "
                f"and {wall} wall tiles costing {wall_price} dollars each. "
                f"How much does the whole tile order cost?")
    return question, f"{floor} * {floor_price} + {wall} * {wall_price}"


def _b2_shared_fundraising(rng: random.Random) -> tuple[str, str]:
    """Shape: (a + b) / c, exact."""
    charities = rng.randint(12, 36)
    total = charities * rng.randint(90, 320)
    bake_sale = rng.randint(total // 5, total * 3 // 5)
    raffle = total - bake_sale
    question = (f"A sports club raised {bake_sale} dollars at a bake sale and {raffle} dollars from a raffle. "
                f"All of the money is shared equally among {charities} local charities. "
                f"How many dollars does each charity receive?")
    return question, f"({bake_sale} + {raffle}) / {charities}"


def _b2_scaled_recipe(rng: random.Random) -> tuple[str, str]:
    """Shape: a * b / c, exact."""
    base_servings = rng.randint(4, 16)
    flour = rng.randint(120, 900)
    servings = base_servings * rng.randint(3, 25)
    question = (f"A canteen cook is making pasta for {servings} people. "
                f"The recipe needs {flour} grams of flour to serve {base_servings} people. "
                f"How many grams of flour does the cook need?")
    return question, f"{flour} * {servings} / {base_servings}"


def _b2_sale_price(rng: random.Random) -> tuple[str, str]:
    """Shape: a - a * p / 100."""
    price = rng.randint(180, 2600)
    percent = rng.randint(5, 45)
    question = (f"A bicycle shop takes {percent}% off the price of a racing bike that normally sells "
                f"for {price} dollars. What does the bike cost after the discount, in dollars?")
    return question, f"{price} - {price} * {percent} / 100"


def _b2_orchard_pruning(rng: random.Random) -> tuple[str, str]:
    """Shape: (a * b - c) / d, exact."""
    rows = rng.randint(24, 80)
    per_row = rng.randint(18, 65)
    workers = rng.randint(6, 24)
    total = rows * per_row
    removed = rng.randint(40, total // 4)
    removed += (total - removed) % workers
    question = (f"An orchard has {rows} rows with {per_row} apple trees in each row. "
                f"After {removed} old trees were cut down, the remaining trees were divided equally "
                f"among {workers} workers for pruning. How many trees does each worker prune?")
    return question, f"({rows} * {per_row} - {removed}) / {workers}"


BLIND2_TEMPLATES = [
    _b2_stadium_seats,
    _b2_school_trip,
    _b2_field_fencing,
    _b2_returned_crates,
    _b2_wages_after_lunch,
    _b2_tile_order,
    _b2_shared_fundraising,
    _b2_scaled_recipe,
    _b2_sale_price,
    _b2_orchard_pruning,
]
