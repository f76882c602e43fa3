"""Generate a small synthetic document dataset: invoices, receipts and ID cards, plus Russian
passports and SNILS cards.

The output follows the VLMHyperBench layout, in three views of the same pages:

* question answering: a `;`-separated ``annotation.csv`` plus an ``images/`` folder (the
  English documents);
* field extraction: ``jsons/<page>.json`` beside ``images/``, every field a page shows; the
  passports' as a flat object of Cyrillic names and values, the SNILS cards' in the
  ``{"fields": {name: {"value", "bboxes"}}}`` layout;
* classification: ``classes.csv`` (``id,image,prompt,answer``), every page and its class.

Everything is rendered with a fixed seed, so re-running the script produces byte-identical
files: the English documents with Pillow's bundled font, the Russian ones with DejaVu Sans
(Debian's fonts-dejavu-core), as Pillow's font has no Cyrillic.

Usage: python scripts/make_sample_dataset.py [--out data/sample_docs] [--seed 1234]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from runners.datasets import VLMHYPERBENCH_COLUMNS

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "sample_docs"
CYRILLIC_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
RUSSIAN_COUNTS = {"passport": 2, "snils": 2}
DEFAULT_SEED = 1234
DOC_COUNTS = {"invoice": 8, "receipt": 6, "id_card": 6}
DEV_PER_CLASS = 1  # the first document of each class goes to the `dev` split
COLUMNS = [*VLMHYPERBENCH_COLUMNS, "answer_bbox"]

BLACK, DARK, GREY, LIGHT, WHITE = 0, 60, 110, 225, 255

FIRST_NAMES = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Irene",
    "Jonas",
    "Karim",
    "Laura",
    "Marco",
    "Nina",
    "Oscar",
    "Priya",
    "Quentin",
    "Rosa",
    "Samuel",
    "Tara",
]
LAST_NAMES = [
    "Anderson",
    "Becker",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Novak",
    "Olsen",
    "Petrov",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Weber",
]
COMPANIES = [
    "Northwind Supplies Ltd",
    "Bluebird Office Co.",
    "Acme Industrial GmbH",
    "Summit Print & Design",
    "Greenleaf Logistics",
    "Orion Tech Services",
    "Riverside Hardware Inc.",
    "Atlas Consulting Group",
]
STORES = [
    "CORNER MARKET",
    "FRESH & GO",
    "CITY PHARMACY",
    "SUNRISE BAKERY",
    "QUICK STOP",
    "GREEN GROCER",
    "BOOK NOOK",
    "CAFE LUNA",
]
STREETS = ["Main St", "Oak Avenue", "Harbor Road", "Elm Street", "King St", "Mill Lane"]
CITIES = ["Springfield 40512", "Riverton 22019", "Lakeside 73104", "Fairview 60615"]
INVOICE_ITEMS = [
    ("Printer paper A4 (box)", 18.0, 42.0),
    ("Toner cartridge", 55.0, 120.0),
    ("Office chair", 89.0, 240.0),
    ("USB-C cable 2m", 6.0, 15.0),
    ("Consulting (hours)", 60.0, 150.0),
    ("Desk lamp", 19.0, 48.0),
    ("Wireless mouse", 12.0, 35.0),
    ("Software license", 99.0, 399.0),
    ("Shipping & handling", 8.0, 25.0),
    ("Monitor 24in", 129.0, 229.0),
]
RECEIPT_ITEMS = [
    ("Milk 1L", 0.9, 1.6),
    ("Bread loaf", 1.5, 3.5),
    ("Coffee beans", 6.0, 12.0),
    ("Apples 1kg", 2.0, 4.0),
    ("Orange juice", 2.5, 4.5),
    ("Cheddar cheese", 3.0, 6.0),
    ("Croissant", 1.2, 2.4),
    ("Bottled water", 0.6, 1.5),
    ("Pasta 500g", 1.0, 2.5),
    ("Notebook", 2.0, 5.0),
    ("Pain relief tabs", 3.5, 8.0),
    ("Chocolate bar", 1.0, 2.5),
]
PAYMENTS = ["VISA", "MASTERCARD", "CASH", "DEBIT"]
NATIONALITIES = ["ARDENIAN", "VALORIAN", "NORLANDIC"]


@dataclass
class Field:
    """One value printed on a document, the question that asks for it, and its name among the
    document's fields (the key of its ground-truth JSON)."""

    key: str
    question: str
    answer: str
    question_type: str
    bbox: tuple[int, int, int, int]


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


class Canvas:
    """Thin wrapper around ImageDraw that records where text was drawn."""

    def __init__(self, width: int, height: int, background: int = WHITE) -> None:
        self.image = Image.new("L", (width, height), background)
        self.draw = ImageDraw.Draw(self.image)

    def text(
        self,
        xy: tuple[int, int],
        text: str,
        size: int = 12,
        fill: int = BLACK,
        anchor: str = "la",
    ) -> tuple[int, int, int, int]:
        self.draw.text(xy, text, font=font(size), fill=fill, anchor=anchor)
        box = self.draw.textbbox(xy, text, font=font(size), anchor=anchor)
        return (int(box[0]), int(box[1]), int(box[2]), int(box[3]))

    def hline(self, y: int, x0: int, x1: int, fill: int = GREY, width: int = 1) -> None:
        self.draw.line([(x0, y), (x1, y)], fill=fill, width=width)

    def dashed(self, y: int, x0: int, x1: int, dash: int = 4) -> None:
        for x in range(x0, x1, dash * 2):
            self.draw.line([(x, y), (min(x + dash, x1), y)], fill=GREY)


def money(value: float, symbol: str = "$") -> str:
    return f"{symbol}{value:,.2f}"


def random_date(rng: random.Random, start: date, end: date) -> date:
    return start + timedelta(days=rng.randrange((end - start).days))


def person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def address(rng: random.Random) -> tuple[str, str]:
    return f"{rng.randint(1, 220)} {rng.choice(STREETS)}", rng.choice(CITIES)


def make_invoice(rng: random.Random) -> tuple[Image.Image, list[Field]]:
    width, height, margin = 420, 594, 24
    right = width - margin
    c = Canvas(width, height)
    vendor = rng.choice(COMPANIES)
    street, city = address(rng)
    number = f"INV-{rng.randint(2022, 2024)}-{rng.randint(1, 9999):04d}"
    issued = random_date(rng, date(2023, 1, 1), date(2024, 12, 1))
    due = issued + timedelta(days=rng.choice([14, 30, 45]))
    first, last = person(rng)
    customer = f"{first} {last}"
    c_street, c_city = address(rng)

    vendor_box = c.text((margin, 24), vendor, size=16)
    c.text((margin, 46), street, size=11, fill=DARK)
    c.text((margin, 60), city, size=11, fill=DARK)
    c.text((right, 22), "INVOICE", size=22, anchor="ra")
    c.hline(84, margin, right, fill=DARK, width=2)

    meta: dict[str, tuple[int, int, int, int]] = {}
    for i, (label, value) in enumerate(
        [("Invoice No:", number), ("Date:", issued.isoformat()), ("Due Date:", due.isoformat())]
    ):
        y = 100 + i * 18
        c.text((236, y), label, size=11, fill=GREY)
        meta[label] = c.text((right, y), value, size=12, anchor="ra")
    c.text((margin, 100), "BILL TO", size=11, fill=GREY)
    customer_box = c.text((margin, 116), customer, size=13)
    c.text((margin, 134), c_street, size=11, fill=DARK)
    c.text((margin, 148), c_city, size=11, fill=DARK)

    cols = {"Description": margin + 6, "Qty": 250, "Unit Price": 322, "Amount": right - 6}
    top = 180
    c.draw.rectangle([margin, top, right, top + 22], fill=LIGHT)
    for name, x in cols.items():
        c.text((x, top + 5), name, size=11, anchor="la" if name == "Description" else "ra")
    subtotal = 0.0
    y = top + 30
    for desc, low, high in rng.sample(INVOICE_ITEMS, rng.randint(3, 5)):
        qty = rng.randint(1, 12)
        price = round(rng.uniform(low, high), 2)
        amount = round(qty * price, 2)
        subtotal += amount
        c.text((cols["Description"], y), desc, size=12)
        c.text((cols["Qty"], y), str(qty), size=12, anchor="ra")
        c.text((cols["Unit Price"], y), money(price), size=12, anchor="ra")
        c.text((cols["Amount"], y), money(amount), size=12, anchor="ra")
        c.hline(y + 20, margin, right, fill=LIGHT)
        y += 26
    subtotal = round(subtotal, 2)
    rate = rng.choice([5, 8, 10, 20])
    tax = round(subtotal * rate / 100, 2)
    total = round(subtotal + tax, 2)

    y += 14
    totals: dict[str, tuple[int, int, int, int]] = {}
    for label, value in [("Subtotal", subtotal), (f"Tax ({rate}%)", tax)]:
        c.text((240, y), label, size=12, fill=DARK)
        totals[label] = c.text((right - 6, y), money(value), size=12, anchor="ra")
        y += 20
    c.hline(y, 240, right, fill=DARK)
    c.text((240, y + 8), "TOTAL DUE", size=14)
    total_box = c.text((right - 6, y + 8), money(total), size=14, anchor="ra")

    c.hline(height - 56, margin, right)
    c.text((margin, height - 46), "Payment terms: due by the due date above.", size=10, fill=GREY)
    c.text((margin, height - 32), "Thank you for your business!", size=10, fill=GREY)

    fields = [
        Field(
            "Invoice number", "What is the invoice number?", number, "number", meta["Invoice No:"]
        ),
        Field(
            "Invoice date", "What is the invoice date?", issued.isoformat(), "date", meta["Date:"]
        ),
        Field("Due date", "What is the due date?", due.isoformat(), "date", meta["Due Date:"]),
        Field("Total due", "What is the total amount due?", money(total), "amount", total_box),
        Field("Subtotal", "What is the subtotal?", money(subtotal), "amount", totals["Subtotal"]),
        Field("Billed to", "Who is the invoice billed to?", customer, "name", customer_box),
        Field(
            "Vendor",
            "What is the name of the company issuing the invoice?",
            vendor,
            "text",
            vendor_box,
        ),
    ]
    return c.image, fields


def make_receipt(rng: random.Random) -> tuple[Image.Image, list[Field]]:
    items = rng.sample(RECEIPT_ITEMS, rng.randint(3, 6))
    width, margin = 320, 20
    height = 330 + 20 * len(items)
    right, mid = width - margin, width // 2
    c = Canvas(width, height)
    store = rng.choice(STORES)
    street, city = address(rng)
    when = random_date(rng, date(2023, 1, 1), date(2024, 12, 31))
    day = when.strftime("%d/%m/%Y")
    clock = f"{rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}"
    number = f"R-{rng.randint(10000, 99999)}"
    payment = rng.choice(PAYMENTS)
    cashier = rng.choice(FIRST_NAMES)

    store_box = c.text((mid, 18), store, size=18, anchor="ma")
    c.text((mid, 44), street, size=11, fill=DARK, anchor="ma")
    c.text((mid, 58), city, size=11, fill=DARK, anchor="ma")
    c.text((mid, 72), f"Tel. 555-{rng.randint(1000, 9999)}", size=11, fill=DARK, anchor="ma")
    c.dashed(94, margin, right)
    c.text((margin, 104), "Date:", size=11, fill=GREY)
    date_box = c.text((margin + 34, 104), day, size=12)
    c.text((right - 44, 104), "Time:", size=11, fill=GREY, anchor="ra")
    c.text((right, 104), clock, size=12, anchor="ra")
    c.text((margin, 122), "Receipt No:", size=11, fill=GREY)
    number_box = c.text((margin + 70, 122), number, size=12)
    cashier_box = c.text((right, 122), cashier, size=12, anchor="ra")
    c.text((cashier_box[0] - 6, 122), "Cashier:", size=11, fill=GREY, anchor="ra")
    c.dashed(144, margin, right)

    y = 154
    subtotal = 0.0
    for name, low, high in items:
        price = round(rng.uniform(low, high), 2)
        subtotal += price
        c.text((margin, y), name, size=12)
        c.text((right, y), money(price), size=12, anchor="ra")
        y += 20
    subtotal = round(subtotal, 2)
    tax = round(subtotal * 0.07, 2)
    total = round(subtotal + tax, 2)
    c.dashed(y + 4, margin, right)
    y += 14
    c.text((margin, y), "Subtotal", size=12, fill=DARK)
    c.text((right, y), money(subtotal), size=12, anchor="ra")
    c.text((margin, y + 18), "Tax 7%", size=12, fill=DARK)
    c.text((right, y + 18), money(tax), size=12, anchor="ra")
    c.text((margin, y + 42), "TOTAL", size=16)
    total_box = c.text((right, y + 42), money(total), size=16, anchor="ra")
    c.dashed(y + 70, margin, right)
    c.text((margin, y + 80), "Paid by:", size=11, fill=GREY)
    payment_box = c.text((margin + 50, y + 80), payment, size=12)
    c.text((right, y + 80), f"{len(items)} items", size=11, fill=GREY, anchor="ra")
    c.text((mid, y + 110), "THANK YOU FOR SHOPPING!", size=11, anchor="ma")
    c.text((mid, y + 126), "Please keep your receipt.", size=10, fill=GREY, anchor="ma")

    fields = [
        Field("Store", "What is the name of the store?", store, "text", store_box),
        Field("Date", "What is the date on the receipt?", day, "date", date_box),
        Field("Receipt number", "What is the receipt number?", number, "number", number_box),
        Field("Total", "What is the total amount paid?", money(total), "amount", total_box),
        Field("Paid by", "What payment method was used?", payment, "text", payment_box),
        Field("Cashier", "What is the name of the cashier?", cashier, "name", cashier_box),
    ]
    return c.image, fields


def make_id_card(rng: random.Random) -> tuple[Image.Image, list[Field]]:
    width, height = 448, 283  # ID-1 card aspect ratio
    c = Canvas(width, height, background=WHITE)
    c.draw.rounded_rectangle([1, 1, width - 2, height - 2], radius=14, fill=245, outline=GREY)
    c.draw.rounded_rectangle([1, 1, width - 2, 52], radius=14, fill=DARK)
    c.draw.rectangle([1, 30, width - 2, 52], fill=DARK)
    c.text((width // 2, 10), "REPUBLIC OF ARDENIA", size=16, fill=WHITE, anchor="ma")
    c.text((width // 2, 32), "IDENTITY CARD", size=12, fill=LIGHT, anchor="ma")

    # Photo placeholder: a simple head-and-shoulders silhouette.
    c.draw.rectangle([20, 68, 130, 208], fill=LIGHT, outline=GREY)
    c.draw.ellipse([52, 88, 98, 140], fill=170)
    c.draw.pieslice([36, 142, 114, 240], 180, 360, fill=170)
    c.draw.rectangle([21, 191, 129, 207], fill=LIGHT)

    first, last = person(rng)
    middle = rng.choice(FIRST_NAMES) if rng.random() < 0.4 else ""
    given = f"{first} {middle}".strip().upper()
    surname = last.upper()
    born = random_date(rng, date(1950, 1, 1), date(2004, 12, 31))
    issued = random_date(rng, date(2016, 1, 1), date(2024, 6, 30))
    expiry = issued.replace(year=issued.year + 10) - timedelta(days=1)
    doc_number = (
        "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
        + f"{rng.randint(0, 9999999):07d}"
    )
    sex = rng.choice(["F", "M"])
    nationality = rng.choice(NATIONALITIES)

    def dmy(d: date) -> str:
        return d.strftime("%d.%m.%Y")

    boxes: dict[str, tuple[int, int, int, int]] = {}
    layout = [
        ("Surname", surname, 150, 64),
        ("Given names", given, 150, 98),
        ("Date of birth", dmy(born), 150, 132),
        ("Sex", sex, 290, 132),
        ("Nationality", nationality, 340, 132),
        ("Document No.", doc_number, 150, 166),
        ("Date of issue", dmy(issued), 150, 200),
        ("Date of expiry", dmy(expiry), 290, 200),
    ]
    for label, value, x, y in layout:
        c.text((x, y), label, size=10, fill=GREY)
        boxes[label] = c.text((x, y + 13), value, size=14)
    c.text((20, 218), "Holder's signature", size=10, fill=GREY)
    c.draw.line([(20, 260), (200, 260)], fill=GREY)
    sx = 30
    for _ in range(6):  # a squiggle standing in for a signature
        nx = sx + rng.randint(10, 22)
        c.draw.line(
            [(sx, 254 - rng.randint(0, 12)), (nx, 254 - rng.randint(0, 12))], fill=DARK, width=2
        )
        sx = nx

    fields = [
        Field(
            "Surname", "What is the surname of the card holder?", surname, "name", boxes["Surname"]
        ),
        Field(
            "Given names",
            "What are the given names of the card holder?",
            given,
            "name",
            boxes["Given names"],
        ),
        Field(
            "Date of birth", "What is the date of birth?", dmy(born), "date", boxes["Date of birth"]
        ),
        Field(
            "Document number",
            "What is the document number?",
            doc_number,
            "number",
            boxes["Document No."],
        ),
        Field(
            "Date of expiry",
            "What is the expiry date of the card?",
            dmy(expiry),
            "date",
            boxes["Date of expiry"],
        ),
        Field(
            "Nationality",
            "What is the nationality of the card holder?",
            nationality,
            "text",
            boxes["Nationality"],
        ),
    ]
    return c.image, fields


MAKERS = {"invoice": make_invoice, "receipt": make_receipt, "id_card": make_id_card}

SURNAMES_RU = ["ОСИПОВ", "КУЗНЕЦОВА", "СМИРНОВ", "ВОЛКОВА", "ЛЕБЕДЕВ", "НОВИКОВА"]
NAMES_RU = [
    ("ИВАН", "ПЕТРОВИЧ"),
    ("АННА", "СЕРГЕЕВНА"),
    ("ОЛЕГ", "ИГОРЕВИЧ"),
    ("МАРИЯ", "ПАВЛОВНА"),
]
PLACES_RU = ["ГОР. МОСКВА", "ГОР. КАЗАНЬ", "ГОР. ТОМСК", "ГОР. САМАРА"]


@cache
def cyrillic_font(size: int) -> ImageFont.FreeTypeFont:
    if not CYRILLIC_FONT.is_file():
        raise SystemExit(
            f"the Russian documents need {CYRILLIC_FONT}: apt-get install fonts-dejavu-core"
        )
    return ImageFont.truetype(str(CYRILLIC_FONT), size)


def cyrillic_text(c: Canvas, xy: tuple[int, int], text: str, size: int, fill: int = BLACK):
    c.draw.text(xy, text, font=cyrillic_font(size), fill=fill)
    box = c.draw.textbbox(xy, text, font=cyrillic_font(size))
    return (int(box[0]), int(box[1]), int(box[2]), int(box[3]))


def russian_person(rng: random.Random) -> tuple[str, str, str]:
    surname = rng.choice(SURNAMES_RU).removesuffix("А")
    name, patronymic = rng.choice(NAMES_RU)
    female = patronymic.endswith("НА")
    return surname + ("А" if female else ""), name, patronymic


def make_passport(rng: random.Random) -> tuple[Image.Image, list[Field]]:
    """The data page of a Russian internal passport (simplified)."""
    c = Canvas(500, 320, background=248)
    c.draw.rectangle([0, 0, 499, 40], fill=200)
    cyrillic_text(c, (20, 10), "РОССИЙСКАЯ ФЕДЕРАЦИЯ · ПАСПОРТ", 16)
    surname, name, patronymic = russian_person(rng)
    born = random_date(rng, date(1960, 1, 1), date(2002, 12, 31))
    series = f"{rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(0, 999999):06d}"
    code = f"{rng.randint(100, 999)}-{rng.randint(0, 999):03d}"
    values = [
        ("Фамилия", surname, "name"),
        ("Имя", name, "name"),
        ("Отчество", patronymic, "name"),
        ("Дата рождения", born.strftime("%d.%m.%Y"), "date"),
        ("Место рождения", rng.choice(PLACES_RU), "text"),
        ("Серия и номер", series, "number"),
        ("Код подразделения", code, "number"),
    ]
    fields = []
    for row, (label, value, kind) in enumerate(values):
        y = 56 + row * 36
        cyrillic_text(c, (150, y), label, 11, fill=GREY)
        box = cyrillic_text(c, (150, y + 13), value, 15)
        fields.append(Field(label, f"{label}?", value, kind, box))
    c.draw.rectangle([20, 60, 130, 200], fill=LIGHT, outline=GREY)  # the photo
    return c.image, fields


def make_snils(rng: random.Random) -> tuple[Image.Image, list[Field]]:
    """A green SNILS card: the insurance number and its holder."""
    c = Canvas(440, 260, background=232)
    cyrillic_text(c, (20, 14), "СТРАХОВОЕ СВИДЕТЕЛЬСТВО", 15)
    cyrillic_text(c, (20, 36), "обязательного пенсионного страхования", 11, fill=DARK)
    surname, name, patronymic = russian_person(rng)
    digits = [rng.randint(0, 9) for _ in range(9)]
    number = "{}{}{}-{}{}{}-{}{}{}".format(*digits) + f" {rng.randint(0, 99):02d}"
    values = [
        ("Номер снилса", number, "number"),
        ("ФИО", f"{surname} {name} {patronymic}", "name"),
        (
            "Дата рождения",
            random_date(rng, date(1960, 1, 1), date(2002, 12, 31)).strftime("%d.%m.%Y"),
            "date",
        ),
        ("Пол", "женский" if patronymic.endswith("НА") else "мужской", "text"),
    ]
    fields = []
    for row, (label, value, kind) in enumerate(values):
        y = 70 + row * 44
        cyrillic_text(c, (20, y), label, 11, fill=GREY)
        box = cyrillic_text(c, (20, y + 14), value, 17 if row == 0 else 14)
        fields.append(Field(label, f"{label}?", value, kind, box))
    return c.image, fields


RUSSIAN_MAKERS = {"passport": make_passport, "snils": make_snils}
CLASS_QUESTION = "What kind of document is this?"


def write_ground_truth(out: Path, page: str, fields: list[Field], *, nested: bool) -> None:
    """``jsons/<page>.json``: a flat object of field values, or VLMHyperBench's nested layout
    ``{"fields": {name: {"value": ..., "bboxes": [[x0, y0, x1, y1]]}}}``."""
    if nested:
        record: dict = {
            "fields": {
                field.key: {"value": field.answer, "bboxes": [list(field.bbox)]} for field in fields
            }
        }
    else:
        record = {field.key: field.answer for field in fields}
    path = out / "jsons" / f"{page}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def generate(out: Path, seed: int = DEFAULT_SEED) -> list[list[str]]:
    """Render all documents into ``out`` and write the three views; return the VQA rows."""
    rng = random.Random(seed)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    classes: list[list[str]] = []
    for doc_class, count in DOC_COUNTS.items():
        for i in range(1, count + 1):
            image, fields = MAKERS[doc_class](rng)
            rel_path = f"images/{doc_class}_{i:03d}.png"
            image.save(out / rel_path, optimize=True)
            write_ground_truth(out, f"{doc_class}_{i:03d}", fields, nested=False)
            classes.append([f"{doc_class}_{i:03d}", rel_path, CLASS_QUESTION, doc_class])
            split = "dev" if i <= DEV_PER_CLASS else "test"
            for field in rng.sample(fields, rng.choice([2, 3])):
                bbox = ",".join(str(v) for v in field.bbox)
                rows.append(
                    [
                        str(len(rows)),
                        split,
                        rel_path,
                        field.question,
                        field.answer,
                        doc_class,
                        field.question_type,
                        bbox,
                    ]
                )
    # The Russian documents draw from a random stream of their own, so the English ones (and
    # annotation.csv) stay as they were before these were added.
    russian = random.Random(seed + 1)
    for doc_class, count in RUSSIAN_COUNTS.items():
        for i in range(1, count + 1):
            image, fields = RUSSIAN_MAKERS[doc_class](russian)
            rel_path = f"images/{doc_class}_{i:03d}.png"
            image.save(out / rel_path, optimize=True)
            write_ground_truth(out, f"{doc_class}_{i:03d}", fields, nested=doc_class == "snils")
            classes.append([f"{doc_class}_{i:03d}", rel_path, CLASS_QUESTION, doc_class])
    with open(out / "annotation.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=";", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    with open(out / "classes.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "image", "prompt", "answer"])
        writer.writerows(classes)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dataset folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args()
    rows = generate(args.out, args.seed)
    print(f"wrote {len(rows)} questions to {args.out / 'annotation.csv'}")


if __name__ == "__main__":
    main()
