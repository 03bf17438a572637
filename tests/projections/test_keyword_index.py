"""The keyword index: BM25 over the strings of each memory's value."""

from __future__ import annotations

from projections.keyword_index import KeywordIndex, value_words


def test_words_come_from_every_string_of_the_value_but_the_index_field() -> None:
    value = {"title": "Café Owners", "tags": ["espresso", {"deep": "Lisbon-2024"}], "n": 3, "_index": ["title"]}
    assert value_words(value) == ["café", "owner", "espresso", "lisbon", "2024"]  # stemmed: owners -> owner


def test_a_word_finds_its_other_forms() -> None:
    index = KeywordIndex()
    index.put("a", {"text": "The city was ruined by the flood."})
    assert [key for key, _ in index.search("ruin floods", 5, lambda key: True)] == ["a"]


def test_rarer_words_and_shorter_memories_rank_first() -> None:
    index = KeywordIndex()
    index.put("a", {"text": "the cat and the dog"})
    index.put("b", {"text": "the cat"})
    index.put("c", {"text": "the dog barks at the postman every single morning"})
    assert [key for key, _ in index.search("cat", 5, lambda key: True)] == ["b", "a"]
    assert index.search("postman dog", 5, lambda key: True)[0][0] == "c"
    assert index.search("the", 5, lambda key: key != "b")[0][0] in ("a", "c")
    assert index.search("unicorn", 5, lambda key: True) == []


def test_overwrite_and_remove_leave_no_trace() -> None:
    index = KeywordIndex()
    index.put("a", {"text": "red apples"})
    index.put("a", {"text": "green pears"})
    assert index.search("apples", 5, lambda key: True) == []
    assert [key for key, _ in index.search("pears", 5, lambda key: True)] == ["a"]
    index.remove("a")
    index.remove("never-there")
    assert index.postings == {} and index.lengths == {} and index.total == 0
