//! Finding the line a key path is written on.
//!
//! `toml` gives typed values without positions; `toml_edit` keeps the span of
//! every key and value. A problem's key path is walked down the spanned
//! document as far as it exists, and the deepest key (or value) found gives
//! the line: the offending key itself, or the header of the table a missing
//! key belongs in.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

use ferry_core::report::{KeyPath, Seg};

/// A config's text with its spans, to look lines up in.
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

/// A step of the walk: a table entry, an array element, or a table of an
/// array of tables.
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

impl<'a> Node<'a> {
    fn table_like(&self) -> Option<&'a dyn TableLike> {
        match *self {
            Node::Item(item) => item.as_table_like(),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
            Node::Table(table) => Some(table as &dyn TableLike),
        }
    }

    fn array_element(&self, i: usize) -> Option<(Option<Range<usize>>, Node<'a>)> {
        match *self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(|t| (t.span(), Node::Table(t))),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                a.get(i).map(|v| (v.span(), Node::Value(v)))
            }
            _ => None,
        }
    }
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Locator<'a> {
        Locator {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// The 1-based line `path` is written on, or where the nearest existing
    /// table is.
    pub(crate) fn line(&self, path: &KeyPath) -> Option<usize> {
        let span = self.span(path)?;
        Some(line_of(self.text, span.start))
    }

    fn span(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut best = None;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(k) => node.table_like().and_then(|t| {
                    let (key, item) = t.get_key_value(k)?;
                    Some((key.span().or_else(|| item.span()), Node::Item(item)))
                }),
                Seg::Index(i) => node.array_element(*i),
            };
            let Some((span, next)) = next else { break };
            best = span.or(best);
            node = next;
        }
        best
    }
}

/// The 1-based line of the byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
}
