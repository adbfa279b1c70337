import pytest

from spark_voice.text import SentenceChunker, chunk_text, drop_markers, guess_language


def stream(text: str, step: int, **kw) -> tuple[list[str], list[int]]:
    """Feed `text` in pieces of `step` characters; return chunks and the feed index each came at."""
    c = SentenceChunker(**kw)
    out, when = [], []
    for i in range(0, len(text), step):
        for ch in c.push(text[i:i + step]):
            out.append(ch)
            when.append(i)
    out += c.flush()
    return out, when


JA = "こんにちは。今日はいい天気ですね！散歩に行きましょうか？ええ、行きましょう。"
EN = "Hello there. The weather is nice today! Shall we go for a walk? Yes, let's go."


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100])
def test_japanese_sentences(step):
    out, _ = stream(JA, step)
    assert out == ["こんにちは。", "今日はいい天気ですね！", "散歩に行きましょうか？", "ええ、行きましょう。"]
    assert "".join(out) == JA


@pytest.mark.parametrize("step", [1, 3, 5, 100])
def test_english_sentences(step):
    out, _ = stream(EN, step)
    assert out == ["Hello there.", "The weather is nice today!", "Shall we go for a walk?", "Yes, let's go."]


def test_released_as_soon_as_speakable():
    c = SentenceChunker()
    assert c.push("こんにちは。") == ["こんにちは。"]  # full-width end: no need to wait
    assert c.push("Hello there.") == []  # an ASCII period may continue ("3.5", "e.g.")
    assert c.push(" How") == ["Hello there."]
    assert c.flush() == ["How"]


def test_minimum_length_merges_short_pieces():
    out = chunk_text("はい。そうです。わかりました。")
    assert out == ["はい。そうです。", "わかりました。"]
    assert all(len(x) >= 6 for x in out[:-1])
    assert chunk_text("Hi. Ok. Fine then, let us go.") == ["Hi. Ok.", "Fine then, let us go."]


def test_clause_split_for_long_japanese_clauses():
    text = "明日の東京の天気は晴れのち曇りで、最高気温は二十度、最低気温は十二度の予報です。"
    out = chunk_text(text)
    assert len(out) >= 2 and "".join(out) == text
    assert out[0].endswith("、")


def test_numbers_abbreviations_and_urls_do_not_split():
    assert chunk_text("Pi is 3.14 roughly. Dr. Smith agrees.") == ["Pi is 3.14 roughly.", "Dr. Smith agrees."]
    assert chunk_text("See example.com for more.") == ["See example.com for more."]


def test_closing_quotes_stay_with_sentence():
    assert chunk_text("彼は「はい。」と言った。次へ進もう。") == ["彼は「はい。」と言った。", "次へ進もう。"]
    assert chunk_text('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_long_text_without_punctuation_is_cut():
    text = "word " * 100
    out = chunk_text(text)
    assert len(out) > 1 and all(len(x) <= 220 for x in out)


def test_flush_and_empty():
    c = SentenceChunker()
    assert c.push("") == [] and c.flush() == []
    assert c.push("途中まで") == [] and c.flush() == ["途中まで"]


def test_guess_language_and_markers():
    assert guess_language("こんにちは") == "ja" and guess_language("カタカナ") == "ja"
    assert guess_language("漢字") == "ja" and guess_language("hello") == "en"
    assert drop_markers("[BLANK_AUDIO]") == ""
    assert drop_markers("hello [BLANK_AUDIO] world (music)") == "hello world"
    assert drop_markers("（音楽）こんにちは") == "こんにちは"


@pytest.mark.parametrize("step", [1, 4, 100])
def test_sentences_inside_quotes_stay_whole(step):
    text = "「モックの文字起こしです。音声は1.0秒でした。」と聞こえました。これは回答です。"
    out, _ = stream(text, step)
    assert out == ["「モックの文字起こしです。音声は1.0秒でした。」と聞こえました。", "これは回答です。"]


def test_unclosed_quote_is_cut_by_length():
    out = chunk_text("「" + "あ" * 300 + "。")
    assert len(out) >= 2 and all(len(x) <= 220 for x in out)
