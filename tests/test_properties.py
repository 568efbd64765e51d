"""Property tests (hypothesis): what a million-sample data set or a free-form model answer will
throw at the code, beyond the cases written by hand.

- random LLaVA conversations (any roles, ``<image>`` anywhere, unicode, whitespace) never crash
  preprocessing: a sample tokenizes or is refused with a `BadSample` reason; when it tokenizes,
  the supervised tokens are exactly the replies (each reply and its ``</s>``, nothing else);
- random strings never crash the VQAv2, POPE and MMBench answer parsers;
- random bytes given as images are skipped (training, dense, eval), never crash.

The example counts are kept small (CI runs on two cores); ``--hypothesis-seed`` reproduces a run.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vitsplit_vlm.vlm.conversation import get_template
from vitsplit_vlm.vlm.data import (
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    SKIP_REASONS,
    BadSample,
    tokenize_conversation,
)

VICUNA, PLAIN = get_template("vicuna_v1"), get_template("plain")
N_IMG = 4
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


# --------------------------------------------------------------------------- conversations

# text with the characters that trip tokenizers and templates: unicode of every category,
# whitespace of every kind, the image placeholder, the template's own markers
MARKERS = [DEFAULT_IMAGE_TOKEN, "</s>", "<s>", "USER:", "ASSISTANT:", "\n", " ", "\t", "\u00a0"]
texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(MARKERS)), max_size=6).map("".join)
roles = st.one_of(st.sampled_from(["human", "gpt"]), st.text(max_size=6), st.none())
turns = st.fixed_dictionaries({"from": roles, "value": st.one_of(texts, st.none(), st.integers())})
conversations = st.one_of(
    st.lists(turns, max_size=6),
    st.none(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)


def _tokenize(conversation, tokenizer, template=VICUNA, num_images=None, max_length=2048):
    return tokenize_conversation(
        conversation,
        tokenizer,
        template,
        num_image_tokens=N_IMG,
        image_token_id=tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN),
        max_length=max_length,
        num_images=num_images,
        sample_id="p0",
    )


@FAST
@given(
    conversation=conversations,
    template=st.sampled_from([VICUNA, PLAIN]),
    num_images=st.one_of(st.none(), st.integers(0, 2)),
    max_length=st.sampled_from([16, 64, 2048]),
)
def test_preprocessing_never_crashes(tokenizer, conversation, template, num_images, max_length):
    try:
        sample = _tokenize(conversation, tokenizer, template, num_images, max_length)
    except BadSample as err:
        assert err.reason in SKIP_REASONS and err.sample_id == "p0"
        return
    ids, labels = sample.input_ids, sample.labels
    assert ids.shape == labels.shape and 0 < len(ids) <= max_length
    supervised = labels != IGNORE_INDEX
    assert supervised.any() and (labels[supervised] == ids[supervised]).all()
    image_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    assert int((ids == image_id).sum()) == N_IMG * sample.num_images
    assert not supervised[ids == image_id].any()


# replies the tiny tokenizer writes back exactly (its vocabulary has no byte fallback for every
# code point): printable ASCII words with inner whitespace, a few non-ASCII letters
WORD = st.text(
    alphabet=string.ascii_letters + string.digits + ".,!?'-()éüß", min_size=1, max_size=8
)
replies = st.lists(WORD, min_size=1, max_size=5).map(" ".join)
questions = st.lists(st.one_of(WORD, st.just(" "), st.just("\n")), min_size=1, max_size=8).map(
    "".join
)


@FAST
@given(
    rounds=st.lists(st.tuples(questions, replies), min_size=1, max_size=4),
    image_at=st.one_of(st.none(), st.sampled_from(["start", "end"])),
)
def test_the_label_mask_is_exactly_the_replies(tokenizer, rounds, image_at):
    """Each maximal run of supervised tokens decodes to one reply and its ``</s>``, in order."""
    assume(all(q.strip() for q, _ in rounds))
    conversation = []
    for j, (question, reply) in enumerate(rounds):
        if j == 0 and image_at == "start":
            question = f"{DEFAULT_IMAGE_TOKEN}\n{question}"
        elif j == 0 and image_at == "end":
            question = f"{question}\n{DEFAULT_IMAGE_TOKEN}"
        conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
    sample = _tokenize(conversation, tokenizer, num_images=int(image_at is not None))
    runs, previous = [], False
    for token, label in zip(sample.input_ids.tolist(), sample.labels.tolist(), strict=True):
        if label != IGNORE_INDEX:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE_INDEX
    decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
    assert decoded == [reply + tokenizer.eos_token for _, reply in rounds]


# --------------------------------------------------------------------------- answer parsers

answers = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(["A", "B.", "(C)", "D:", "yes", "No", "not", ",", ".", " ", "\n"])
    ).map(" ".join),
)


@FAST
@given(text=answers, choices=st.dictionaries(st.sampled_from("ABCD"), st.text(max_size=10)))
def test_answer_parsers_never_crash(text, choices):
    from vitsplit_vlm.eval import mmbench, pope
    from vitsplit_vlm.eval.vqav2 import PROTOCOLS

    assert pope.parse_yes_no(text) in ("yes", "no")
    letter = mmbench.match_answer(text, choices)
    assert letter is None or letter in mmbench.MATCH_LETTERS
    for compare, norm in PROTOCOLS.values():
        prediction, refs = compare(text, [text, "yes", "2"], norm)
        assert isinstance(prediction, str) and all(isinstance(r, str) for r in refs)


# --------------------------------------------------------------------------- images

# random bytes, and random bytes behind a real image header (what a truncated download looks like)
HEADERS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00WEBP"]
image_bytes = st.tuples(st.sampled_from(HEADERS), st.binary(max_size=512)).map(b"".join)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("random_images")


@FAST
@given(data=image_bytes)
def test_random_bytes_as_images_are_skipped(folder, data):
    from vitsplit_vlm.dense.predict import UNREADABLE
    from vitsplit_vlm.eval.answer import EvalInputError, _open_image
    from vitsplit_vlm.images import open_rgb
    from vitsplit_vlm.vlm.data import load_image

    path = folder / "random.img"
    path.write_bytes(data)
    try:  # the shared decoder: an RGB image, or one of the errors every loader catches
        image = open_rgb(path)
    except UNREADABLE:
        image = None
    assert image is None or image.mode == "RGB"
    try:  # training: refused as corrupt_image
        load_image(path, "r0")
        assert image is not None
    except BadSample as err:
        assert err.reason == "corrupt_image" and image is None
    try:  # evaluation: one line naming the question
        _open_image(path, "q0")
    except EvalInputError as err:
        assert "q0: cannot read image" in str(err) and image is None


@FAST
@given(data=image_bytes)
def test_random_bytes_fail_dense_prediction_only_in_the_ways_it_skips(folder, data):
    """`dense predict` skips an image whose `prepare` raises one of `UNREADABLE` (anything else
    would stop the whole folder)."""
    from vitsplit_vlm.dense.predict import UNREADABLE, prepare

    path = folder / "dense.png"
    path.write_bytes(data)
    try:
        _, pixels, _ = prepare(path, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    except UNREADABLE:
        return
    assert pixels.ndim == 4 and pixels.shape[1] == 3
