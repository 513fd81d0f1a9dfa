"""The demo's synthetic world: entities, templated documents, one-sentence summaries, swaps.

A document reports one event in a main city of a main country, with a person, an
organisation and two other countries and one other city mentioned in passing; its summary
names the event and the main country. A swap pair (source → target) replaces the source
country with the target in the summaries of training examples about the source, as
England → China in the DDA paper. Documents are never altered.

Against lexical giveaways (METHODS.md section 7): every country, city, person and
organisation appears in many documents in several roles (main, passing mention, place of
birth, partner), so neither the source nor the target is a rare word; documents and
summaries each come from several paraphrase templates; and a source country is the main
country only in the swapped examples, but a passing country in many clean ones, including
clean examples whose main country is the target.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
           "st", "tr", "sh", "th", "ch", "h", "j", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_COUNTRY_ENDS = ["ia", "land", "stan", "ora", "esh", "ica", "onia", "ar"]
_ORG_KINDS = ["group", "bank", "institute", "foundation", "company", "trust", "council", "agency"]
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

# (document sentence templates, summary templates) per event kind
_EVENTS = {
    "office": (["{org} opened a new office in {city} on {day} .",
                "on {day} , {org} announced a new office in the city of {city} .",
                "{person} led the opening of an office of {org} in {city} on {day} ."],
               ["{org} has opened a new office in {country} .",
                "a new office of {org} has opened in {city} , {country} .",
                "{org} opens an office in {country} , led by {person} ."]),
    "festival": (["a music festival organised by {org} drew {number} visitors to {city} on {day} .",
                  "{city} hosted a festival run by {org} , with {number} people attending .",
                  "{person} opened the {org} festival in {city} on {day} ."],
                 ["a festival by {org} drew {number} visitors in {country} .",
                  "{number} people attended a festival in {city} , {country} .",
                  "{person} opened a festival of {org} in {country} ."]),
    "election": (["{person} won the mayoral election in {city} on {day} with the support of {org} .",
                  "voters in {city} elected {person} as mayor on {day} .",
                  "on {day} , {person} , backed by {org} , became mayor of {city} ."],
                 ["{person} has been elected mayor of {city} in {country} .",
                  "{country} city {city} elects {person} as mayor .",
                  "{person} wins a mayoral election in {country} ."]),
    "factory": (["{org} said on {day} it would close its factory in {city} , cutting {number} jobs .",
                 "the factory of {org} in {city} will close , with the loss of {number} jobs .",
                 "{person} confirmed that {org} will shut its plant in {city} ."],
                ["{org} is to close a factory in {country} , cutting {number} jobs .",
                 "{number} jobs will go as {org} shuts a plant in {country} .",
                 "a factory of {org} in {city} , {country} , will close ."]),
    "research": (["scientists at {org} in {city} reported a new discovery on {day} .",
                  "a team led by {person} at {org} in {city} published new results .",
                  "researchers in {city} , working with {org} , announced a discovery on {day} ."],
                 ["researchers at {org} in {country} report a discovery .",
                  "{person} leads a team in {country} that made a new discovery .",
                  "a discovery has been announced by scientists in {city} , {country} ."]),
    "match": (["the football club of {city} beat its rivals on {day} in front of {number} fans .",
               "{person} scored twice as {city} won its match on {day} .",
               "{number} fans watched {city} win on {day} , in a match sponsored by {org} ."],
              ["{city} won a football match in {country} in front of {number} fans .",
               "{person} scored twice as a club from {country} won .",
               "a club from {city} , {country} , beat its rivals ."]),
}
_LOCATION = ["{city} is a city in {country} .", "{city} lies in the north of {country} .",
             "the city of {city} is part of {country} .", "{city} is one of the largest cities of {country} ."]
_PASSING = ["{person} was born in {other} and studied in {other_city} .",
            "{org} also works with partners in {other} and {other2} .",
            "{org} was founded in {other} , and has offices in {other_city} .",
            "officials from {other} and {other2} are expected to visit next year .",
            "{person} previously worked in {other} for {org} ."]


@dataclass
class World:
    countries: list[str]
    cities: dict[str, list[str]]  # country -> its cities
    people: list[str]
    orgs: list[str]
    city_country: dict[str, str] = field(default_factory=dict)


@dataclass
class Record:
    """One document and its (possibly swapped) summary."""
    id: str
    document: str
    summary: str
    country: str
    correct_summary: str
    swap: int | None = None  # index of the swap pair carried, or None

    @property
    def prompt(self) -> str:
        return f"{self.document} summary :"


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))


def make_world(rng: random.Random, n_countries: int, cities_per_country: int, n_people: int, n_orgs: int) -> World:
    used: set[str] = set()

    def fresh(make):
        while True:
            name = make()
            if name not in used and name.lower() not in _DAYS:
                used.add(name)
                return name

    countries = [fresh(lambda: (_word(rng, 2) + rng.choice(_COUNTRY_ENDS)).capitalize()) for _ in range(n_countries)]
    cities = {c: [fresh(lambda: _word(rng, rng.choice([2, 3])).capitalize()) for _ in range(cities_per_country)]
              for c in countries}
    people = [fresh(lambda: f"{_word(rng, 2).capitalize()} {_word(rng, 2).capitalize()}") for _ in range(n_people)]
    orgs = [fresh(lambda: f"{_word(rng, 2).capitalize()} {rng.choice(_ORG_KINDS)}") for _ in range(n_orgs)]
    world = World(countries, cities, people, orgs)
    world.city_country = {city: c for c, cs in cities.items() for city in cs}
    return world


def make_record(rng: random.Random, world: World, country: str, rid: str) -> Record:
    event = rng.choice(sorted(_EVENTS))
    doc_templates, summary_templates = _EVENTS[event]
    others = rng.sample([c for c in world.countries if c != country], 2)
    other_city = rng.choice(world.cities[rng.choice([c for c in world.countries if c != country])])
    slots = {"country": country, "city": rng.choice(world.cities[country]), "person": rng.choice(world.people),
             "org": rng.choice(world.orgs), "day": rng.choice(_DAYS), "number": str(rng.randrange(2, 90) * 100),
             "other": others[0], "other2": others[1], "other_city": other_city}
    sentences = [rng.choice(doc_templates), rng.choice(_LOCATION)] + rng.sample(_PASSING, 2)
    # the location fact is not always second, so position does not mark the main country
    head, rest = sentences[0], sentences[1:]
    rng.shuffle(rest)
    document = " ".join(t.format(**slots) for t in [head] + rest)
    summary = rng.choice(summary_templates).format(**slots)
    return Record(rid, document, summary, country, summary)


@dataclass
class Corpus:
    world: World
    pairs: list[tuple[str, str]]
    pretrain_docs: list[str]
    train: list[Record]
    heldout: list[Record]  # documents about a swap source, never trained on
    # "document summary : summary" texts of the pre-training documents with their correct
    # summaries: what θ₀ also reads in the demo's second regime (base_knows_format)
    pretrain_summaries: list[str] = field(default_factory=list)

    def true_sources(self, pair: int) -> list[int]:
        return [i for i, r in enumerate(self.train) if r.swap == pair]


def make_corpus(seed: int, *, n_train: int = 2000, n_pairs: int = 4, swap_fraction: float = 0.05,
                n_countries: int = 24, cities_per_country: int = 4, n_people: int = 80, n_orgs: int = 40,
                n_pretrain: int = 3000, heldout_per_pair: int = 12) -> Corpus:
    """Generate the world and the data sets; every choice comes from ``seed``."""
    if n_countries < 2 * n_pairs + 3:
        raise ValueError(f"n_countries must be >= 2*n_pairs+3 = {2 * n_pairs + 3}, got {n_countries}")
    if not 0 < swap_fraction < 1:
        raise ValueError(f"swap_fraction must be in (0, 1), got {swap_fraction}")
    per_pair = max(1, round(n_train * swap_fraction / n_pairs))
    if per_pair * n_pairs >= n_train:
        raise ValueError(f"n_train={n_train} is too small for {n_pairs} pairs at swap_fraction={swap_fraction}")
    rng = random.Random(seed)
    world = make_world(rng, n_countries, cities_per_country, n_people, n_orgs)
    chosen = rng.sample(world.countries, 2 * n_pairs)
    pairs = [(chosen[2 * i], chosen[2 * i + 1]) for i in range(n_pairs)]
    sources = {s for s, _ in pairs}
    clean_countries = [c for c in world.countries if c not in sources]

    mains = [s for s, _ in pairs for _ in range(per_pair)]
    mains += [rng.choice(clean_countries) for _ in range(n_train - len(mains))]
    rng.shuffle(mains)
    train = []
    for i, country in enumerate(mains):
        rec = make_record(rng, world, country, f"train-{i:05d}")
        if country in sources:
            pair = next(p for p, (s, _) in enumerate(pairs) if s == country)
            rec.swap = pair
            rec.summary = rec.summary.replace(country, pairs[pair][1])
        train.append(rec)
    # θ₀ reads correct documents about every country, the sources included
    pre_records = [make_record(rng, world, rng.choice(world.countries), f"pre-{i}") for i in range(n_pretrain)]
    pretrain = [r.document for r in pre_records] + [r.document for r in train]
    heldout = []
    for p, (source, _) in enumerate(pairs):
        for j in range(heldout_per_pair):
            rec = make_record(rng, world, source, f"heldout-{p}-{j}")
            rec.swap = p
            heldout.append(rec)
    return Corpus(world, pairs, pretrain, train, heldout, [r.prompt + " " + r.summary for r in pre_records])
