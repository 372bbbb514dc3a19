"""The built-in world (objectives/world): deterministic, balanced, leak-free, readable by the real
readers (T0-Eval, EAI-Eval through lm-eval, the multitask source, the vocabulary)."""

import collections
import json
import random
import re

import pytest

from objectives import t0, vocab
from objectives.world import EAI_TASKS, T0_TASKS, read_manifest, write_world
from objectives.world import corpus as corpus_lib
from objectives.world import heldout, mtf
from objectives.world.facts import make_world
from objectives.world.writer import HeldOutIndex, resolve_size


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "seed0"
    write_world(out, 0, size="test")
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_same_seed_same_bytes_other_seed_differs(world_dir, tmp_path):
    again = write_world(tmp_path / "again", 0, size="test")
    assert again["files"] == read_manifest(world_dir)["files"]  # spiece.model included
    size = resolve_size("test")
    other = make_world(1, size.people, size.towns)
    assert other != make_world(0, size.people, size.towns)
    assert (list(corpus_lib.documents(other, 1, 50))
            != list(corpus_lib.documents(make_world(0, size.people, size.towns), 0, 50)))
    assert heldout.make_heldout(other, 1, 12) != heldout.make_heldout(
        make_world(0, size.people, size.towns), 0, 12)


def test_rewrite_is_a_no_op_and_a_damaged_world_is_rewritten(world_dir):
    corpus = world_dir / "corpus.txt"
    before = corpus.stat().st_mtime_ns
    assert write_world(world_dir, 0, size="test") == read_manifest(world_dir)
    assert corpus.stat().st_mtime_ns == before
    manifest = read_manifest(world_dir)
    assert manifest["seed"] == 0 and manifest["tasks"] == {"t0": list(T0_TASKS),
                                                           "eai": list(EAI_TASKS)}
    assert {"corpus.txt", "spiece.model"} <= set(manifest["files"])
    with pytest.raises(ValueError, match="size"):
        write_world(world_dir, 0, size="huge")


def test_layout_matches_both_suites(world_dir):
    from harness.eval import eai_eval, t0_eval

    for name in T0_TASKS:
        dataset = t0_eval.find_dataset(name)
        assert dataset.data_path(world_dir / "eval") == world_dir / "eval" / heldout.FILES[name][0]
    for name in EAI_TASKS:
        path = eai_eval.local_data_file(world_dir / "eval", name)
        assert path.relative_to(world_dir / "eval").as_posix() in heldout.FILES[name]


def test_labels_are_balanced(world_dir):
    label_field = {"copa": "label", "hellaswag": "label", "story_cloze": "answer_right_ending",
                   "winogrande": "answer", "arc_easy": "answerKey"}
    for name, paths in heldout.FILES.items():
        if name in ("lambada_openai", "sciq"):  # no label: the answer is a word / a fixed slot
            continue
        rows = _rows(world_dir / "eval" / paths[0])
        counts = collections.Counter(str(r[label_field.get(name, "label")]) for r in rows)
        assert len(counts) >= 2 and max(counts.values()) - min(counts.values()) <= 1, (name, counts)
    copa = _rows(world_dir / "eval" / heldout.FILES["copa"][0])
    assert collections.Counter(r["question"] for r in copa) == {"cause": 6, "effect": 6}


def _corpus_verdicts(count=3000):
    """(verdict, the answer as the corpus says it) of ``count`` verification documents."""
    size = resolve_size("test")
    world = make_world(0, size.people, size.towns)
    forms = sorted({form for said in corpus_lib.VERDICTS.values() for form in said}, key=len,
                   reverse=True)
    records = []

    def recording(rng, claim, verdict):
        text = corpus_lib._ask(rng, claim, verdict)
        ending = text.lower().rstrip(".")
        said = next(f for f in forms if ending.endswith(" " + f.lower().rstrip(".")))
        records.append((verdict, said.rstrip(".").lower()))
        return text

    rng = random.Random(0)
    kinds = (corpus_lib.verify_world, corpus_lib.verify_passage, corpus_lib.verify_story)
    for k in range(count):
        kinds[k % 3](rng, world, ask=recording)
    return records


def test_corpus_says_every_verdict_equally_often_and_in_the_held_out_prompts_words():
    """World version 4: true, false and unknown are equally common, and every answer of the
    held-out NLI prompts is a verdict the corpus says with the meaning the prompt gives it (the
    templates list their answers in label order: ANLI entailment / neutral / contradiction, CB
    entailment / contradiction / neutral, RTE entailment / not entailment)."""
    from harness.eval import t0_eval

    records = _corpus_verdicts()
    counts = collections.Counter(verdict for verdict, _ in records)
    assert set(counts) == {"true", "false", "unknown"}
    assert max(counts.values()) / min(counts.values()) < 1.15, counts
    meanings = collections.defaultdict(set)
    for verdict, said in records:
        meanings[said].add(verdict)
    assert all(len(v) == 1 for v in meanings.values()), meanings  # no word says two verdicts
    label_meaning = {"anli_r1": ("true", "unknown", "false"), "cb": ("true", "false", "unknown"),
                     "rte": ("true", "false")}
    for name, meaning in label_meaning.items():
        for prompt, template in t0_eval.eval_templates(name):
            choices = [c.strip() for c in template.answer_choices.split("|||")]
            assert len(choices) == len(meaning), (name, prompt)
            for choice, verdict in zip(choices, meaning):
                if name == "rte" and verdict == "false":
                    # not entailment: false or undetermined; the corpus says "No" for false
                    assert meanings.get(choice.lower()) in ({"false"}, {"unknown"}), prompt
                else:
                    assert meanings.get(choice.lower()) == {verdict}, (name, prompt, choice)


def test_every_t0_prompt_renders_with_its_gold_among_the_choices(world_dir):
    from harness.eval import t0_eval

    for name in T0_TASKS:
        dataset = t0_eval.find_dataset(name)
        examples = t0_eval.load_examples(dataset, data_dir=world_dir / "eval")
        assert len(examples) == 12
        for prompt, template in t0_eval.eval_templates(dataset):
            with t0_eval._compiled_once():  # each Jinja source compiled once, as the suite does
                rendered = [t0_eval.render_prompt(template, e, t0_eval.prompt_seed(name, prompt, i))
                            for i, e in enumerate(examples)]
            rendered = [r for r in rendered if r is not None]
            # COPA's cause-only / effect-only prompts render half of the examples.
            assert len(rendered) >= len(examples) // 2, (name, prompt)
            assert all(r.gold is not None for r in rendered), (name, prompt)


def test_every_eai_task_builds_through_lm_eval(world_dir):
    from harness.eval import eai_eval

    for name in EAI_TASKS:
        suite_task = eai_eval.resolve_tasks([name])[0]
        eai_eval._check_local_file(suite_task, eai_eval.local_data_file(world_dir / "eval", name))
        task = eai_eval.build_task(name, world_dir / "eval")
        docs = list(task.eval_docs)
        assert len(docs) == 12, name
        for doc in docs:
            text = task.doc_to_text(doc)
            assert isinstance(text, (str, int)), name
            if task.OUTPUT_TYPE == "multiple_choice":
                choices, target = task.doc_to_choice(doc), task.doc_to_target(doc)
                # winogrande's partial scoring: doc_to_text is the gold index of the contexts.
                gold = text if isinstance(text, int) else (
                    target if isinstance(target, int) else choices.index(target))
                assert 0 <= gold < len(choices), name


def test_multitask_mixture_reads_as_the_t0_layout(world_dir):
    t0.check_jsonl_directory(world_dir / "mtf")
    found = t0.scan_jsonl_directory(world_dir / "mtf")
    assert set(found) == {mtf.dataset_key(f) for f in mtf.FAMILIES}
    for family, (_, templates) in mtf.FAMILIES.items():
        counts = found[mtf.dataset_key(family)]
        assert sorted(counts) == sorted(t.name for t in templates)  # every template rendered
        assert all(count == 24 for _, count in counts.values())


def _literal_chunks(jinja: str) -> list[str]:
    """The fixed text of a promptsource template: runs of >= 4 words outside Jinja tags."""
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\|\|\|", "\n", jinja)
    chunks = []
    for piece in text.split("\n"):
        words = piece.split()
        chunks += [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    return chunks


def test_no_held_out_template_or_example_in_the_mixture(world_dir):
    from harness.eval import t0_eval

    mixture_text = [f"{r['inputs']}\n{r['targets']}" for path in (world_dir / "mtf").glob("*.jsonl")
                    for r in _rows(path)]
    everything = "\n".join(mixture_text)
    held_out = {name: _rows(world_dir / "eval" / paths[0]) for name, paths in heldout.FILES.items()}
    fields = [text for name, rows in held_out.items() for row in rows
              for text in heldout.text_fields(name, row) if len(text.split()) >= 4]
    assert len(fields) > 300
    leaked = [text for text in fields if text in everything]  # brute force, independent of the index
    assert not leaked, leaked[:3]
    assert HeldOutIndex(held_out).find("x " + fields[0] + " y") in fields  # the guard works

    template_text = " ".join(f"{t.inputs} {t.targets}" for _, ts in mtf.FAMILIES.values()
                             for t in ts)
    template_text = " ".join(template_text.split())
    for name in T0_TASKS:
        for prompt, template in t0_eval.eval_templates(name):
            for chunk in _literal_chunks(template.jinja):
                assert chunk not in template_text, (name, prompt, chunk)
    mtf_names = {t.name for _, ts in mtf.FAMILIES.values() for t in ts}
    assert not mtf_names & {p for name in T0_TASKS for p, _ in t0_eval.eval_templates(name)}


def test_tokenizer_is_on_t5_ids_and_round_trips(world_dir):
    import sentencepiece

    model = str(world_dir / "spiece.model")
    processor = sentencepiece.SentencePieceProcessor(model_file=model)
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (
        0, 1, 2, -1)
    ids = vocab.vocabulary_ids(model)
    assert ids == processor.get_piece_size() + vocab.NUM_SENTINELS
    assert read_manifest(world_dir)["vocabulary"]["ids"] == ids
    samples = (world_dir / "corpus.txt").read_text().splitlines()[:50] + [
        'Take the following as truth: {premise} "Guaranteed", «Impossible» or — maybe — café?']
    for text in samples:
        encoded = processor.encode(text)
        assert vocab.UNK_ID not in encoded and processor.decode(encoded) == text
    assert len(processor.encode("Mara put the key in the drawer.")) <= 10  # word-level pieces
    seqio_vocab = vocab.load_vocabulary(model)
    assert seqio_vocab.vocab_size == ids and seqio_vocab.decode(
        seqio_vocab.encode("the key")) == "the key"


def test_run_config_accepts_the_world(world_dir):
    from harness.train.config import check_inputs, load_config

    size = read_manifest(world_dir)["vocabulary"]["model_vocab_size"]
    sets = [f"data.source={world_dir / 'corpus.txt'}", f"data.vocabulary={world_dir / 'spiece.model'}",
            "model.preset=tiny", f"model.vocab_size={size}"]
    check_inputs(load_config(None, sets))
    check_inputs(load_config(None, sets[1:] + [f"data.source={world_dir / 'mtf'}",
                                               "data.objective=mtf"]))
