//! Regular expressions for rule conditions: RE2-like syntax, matched against
//! the whole value, in time linear in its length (an NFA simulation, never
//! backtracking).
//!
//! Own code rather than a regex crate: a rule only asks "does the whole value
//! match?", so there are no captures, no search and no match positions to
//! support, and a crate that supports them was an eighth of the module.
//!
//! Syntax: literals and escaped punctuation (`\.`), `.` (any character but
//! `\n`), classes `[a-z0-9_]`, `[^...]`, the ASCII classes `\d \w \s` and
//! their negations (also inside brackets), `\t \n \r \f \v`, `\xHH`,
//! `\x{H...}`, groups `(...)`, `(?:...)`, `(?P<name>...)`, `(?<name>...)`,
//! alternation `|`, repetition `* + ? {n} {n,} {n,m}` (a trailing `?`, lazy,
//! is accepted and changes nothing for a whole-value match), anchors `^ $`,
//! and the flag `(?i)` / `(?i:...)` (ASCII case-insensitive). Anything else
//! (`\b`, backreferences, look-around, other flags) is rejected at config
//! time with the reason.

use std::cell::RefCell;

/// Bound on a compiled pattern's size, in instructions: with values bounded
/// too, it bounds the work of one match.
pub const MAX_INSTRUCTIONS: usize = 8192;
/// Bound on the nesting of groups.
pub const MAX_NESTING: usize = 32;
/// Largest count in `{n,m}`.
const MAX_REPEAT: u32 = 1000;

#[derive(Debug)]
enum Node {
    Empty,
    /// One character from a set of inclusive ranges (sorted, merged).
    Set(Vec<(char, char)>),
    Start,
    End,
    Concat(Vec<Node>),
    Alternate(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

#[derive(Debug)]
enum Inst {
    /// Consumes a character in one of the ranges (indexes into `ranges`).
    Set {
        from: usize,
        to: usize,
    },
    Split(usize, usize),
    Jump(usize),
    AssertStart,
    AssertEnd,
    Match,
}

/// A compiled pattern that matches whole values.
#[derive(Debug)]
pub struct Regex {
    program: Vec<Inst>,
    ranges: Vec<(char, char)>,
    /// The simulation's thread lists, kept between matches so that matching
    /// allocates nothing once warm.
    scratch: RefCell<Option<(Threads, Threads)>>,
}

impl Regex {
    /// Compiles `pattern`; the error says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Regex, String> {
        let mut parser = Parser {
            chars: pattern.chars().collect(),
            pos: 0,
            depth: 0,
            fold: false,
            names: Vec::new(),
        };
        let node = parser.alternation()?;
        if parser.pos < parser.chars.len() {
            return Err("unopened group: `)` without `(`".into());
        }
        let mut compiler = Compiler::default();
        compiler.node(&node)?;
        compiler.push(Inst::Match)?;
        Ok(Regex {
            program: compiler.program,
            ranges: compiler.ranges,
            scratch: RefCell::new(None),
        })
    }

    /// The compiled program's length, in instructions: what a match's
    /// work per character and its kept state grow with.
    pub fn size(&self) -> usize {
        self.program.len()
    }

    /// Whether the pattern matches all of `text`.
    pub fn is_match(&self, text: &str) -> bool {
        match self.scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let n = self.program.len();
                let (current, next) =
                    scratch.get_or_insert_with(|| (Threads::new(n), Threads::new(n)));
                self.run(text, current, next)
            }
            // Only if a match were re-entered: use fresh lists.
            Err(_) => {
                let n = self.program.len();
                self.run(text, &mut Threads::new(n), &mut Threads::new(n))
            }
        }
    }

    fn run(&self, text: &str, current: &mut Threads, next: &mut Threads) -> bool {
        current.clear();
        self.add(current, 0, true, text.is_empty());
        for (at, c) in text.char_indices() {
            if current.is_empty() {
                return false;
            }
            next.clear();
            let end = at + c.len_utf8() == text.len();
            for i in 0..current.len {
                let Some(&pc) = current.dense.get(i) else {
                    break;
                };
                if let Some(Inst::Set { from, to }) = self.program.get(pc) {
                    let ranges = self.ranges.get(*from..*to).unwrap_or_default();
                    if ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) {
                        self.add(next, pc + 1, false, end);
                    }
                }
            }
            std::mem::swap(current, next);
        }
        current
            .dense
            .get(..current.len)
            .unwrap_or_default()
            .iter()
            .any(|&pc| matches!(self.program.get(pc), Some(Inst::Match)))
    }

    /// Adds `pc` and every instruction reachable from it without consuming
    /// a character, at a position that is (or is not) the start and the end.
    fn add(&self, threads: &mut Threads, pc: usize, start: bool, end: bool) {
        let mut stack = std::mem::take(&mut threads.stack);
        stack.clear();
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if !threads.insert(pc) {
                continue;
            }
            match self.program.get(pc) {
                Some(Inst::Jump(to)) => stack.push(*to),
                Some(Inst::Split(a, b)) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Some(Inst::AssertStart) if start => stack.push(pc + 1),
                Some(Inst::AssertEnd) if end => stack.push(pc + 1),
                _ => {}
            }
        }
        threads.stack = stack;
    }
}

/// A set of program counters with O(1) insert, membership and clear, in
/// insertion order (a sparse set).
#[derive(Debug)]
struct Threads {
    dense: Vec<usize>,
    sparse: Vec<usize>,
    len: usize,
    stack: Vec<usize>,
}

impl Threads {
    fn new(n: usize) -> Threads {
        Threads {
            dense: vec![0; n],
            sparse: vec![0; n],
            len: 0,
            stack: Vec::with_capacity(n),
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// False if `pc` was already in the set (or out of range).
    fn insert(&mut self, pc: usize) -> bool {
        let Some(&slot) = self.sparse.get(pc) else {
            return false;
        };
        if slot < self.len && self.dense.get(slot) == Some(&pc) {
            return false;
        }
        match (self.dense.get_mut(self.len), self.sparse.get_mut(pc)) {
            (Some(d), Some(s)) => {
                *d = pc;
                *s = self.len;
                self.len += 1;
                true
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing.
// ---------------------------------------------------------------------------

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
    /// `(?i)` in effect.
    fold: bool,
    /// Group names seen (a name may be used once).
    names: Vec<String>,
}

const DIGIT: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!("nested more than {MAX_NESTING} levels deep"));
        }
        Ok(())
    }

    fn alternation(&mut self) -> Result<Node, String> {
        let mut branches = vec![self.concatenation()?];
        while self.eat('|') {
            branches.push(self.concatenation()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alternate(branches)
        })
    }

    fn concatenation(&mut self) -> Result<Node, String> {
        let saved_fold = self.fold;
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let Some(atom) = self.atom()? else {
                // A flag group such as `(?i)`: it changes what follows, and
                // an operator right after it applies to what came before
                // (as regex-lite, the engine this replaced, reads it).
                if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
                    let Some(last) = items.pop() else {
                        return Err("repetition operator with nothing before it".into());
                    };
                    items.push(self.repetition(last)?);
                }
                continue;
            };
            items.push(self.repetition(atom)?);
        }
        // `(?i)` lasts to the end of the enclosing group, across `|`.
        if self.peek() != Some('|') {
            self.fold = saved_fold;
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    fn repetition(&mut self, atom: Node) -> Result<Node, String> {
        let mut node = atom;
        loop {
            let one_char = |p: &mut Parser, counts| {
                p.pos += 1;
                counts
            };
            let (min, max) = match self.peek() {
                Some('*') => one_char(self, (0, None)),
                Some('+') => one_char(self, (1, None)),
                Some('?') => one_char(self, (0, Some(1))),
                Some('{') => self.counts()?, // consumes `{n,m}`
                _ => return Ok(node),
            };
            self.eat('?'); // lazy: no difference for a whole-value match
            node = Node::Repeat {
                node: Box::new(node),
                min,
                max,
            };
        }
    }

    /// `{n}`, `{n,}`, `{n,m}` at the cursor (consumed).
    fn counts(&mut self) -> Result<(u32, Option<u32>), String> {
        self.pos += 1;
        // Spaces are allowed around the numbers (`{ 2, 3 }`), as in regex-lite.
        let number = |p: &mut Parser| -> Option<u32> {
            while p.eat(' ') {}
            let from = p.pos;
            let mut n: u32 = 0;
            while let Some(d) = p.peek().and_then(|c| c.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d);
                p.pos += 1;
            }
            let found = p.pos > from;
            while p.eat(' ') {}
            found.then_some(n)
        };
        // After an atom, `{` must start a valid count (as regex-lite, the
        // engine this replaced, had it; RE2 would read a literal `{`).
        let invalid = || Err("invalid repetition: expected {n}, {n,} or {n,m}".to_string());
        let Some(min) = number(self) else {
            return invalid();
        };
        let max = if self.eat(',') {
            let spaced = self.peek() == Some(' ');
            let max = number(self);
            if spaced && max.is_none() {
                return invalid(); // `{2, }`: regex-lite wants a number there
            }
            max
        } else {
            Some(min)
        };
        if !self.eat('}') {
            return invalid();
        }
        if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
            return Err(format!("repetition count above {MAX_REPEAT}"));
        }
        if max.is_some_and(|m| m < min) {
            return Err("repetition range {n,m} with m < n".into());
        }
        Ok((min, max))
    }

    /// One atom, or None for a flag group (`(?i)`).
    fn atom(&mut self) -> Result<Option<Node>, String> {
        let Some(c) = self.peek() else {
            return Err("unexpected end".into());
        };
        self.pos += 1;
        let node = match c {
            '(' => return self.group(),
            '[' => self.class()?,
            '.' => Node::Set(vec![('\0', '\t'), ('\u{b}', char::MAX)]),
            '^' => Node::Start,
            '$' => Node::End,
            '\\' => self.escape(false)?,
            '*' | '+' | '?' | '{' => {
                return Err(format!("repetition operator `{c}` with nothing before it"))
            }
            c => self.literal(c),
        };
        Ok(Some(node))
    }

    fn literal(&self, c: char) -> Node {
        let mut set = vec![(c, c)];
        if self.fold && c.is_ascii_alphabetic() {
            let other = if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            set.push((other, other));
        }
        Node::Set(normalize(set))
    }

    /// After `(`: a group, or None for a flag group (`(?i)`), which changes
    /// the rest of the enclosing group instead.
    fn group(&mut self) -> Result<Option<Node>, String> {
        self.nest()?;
        let saved_fold = self.fold;
        if self.eat('?') && !self.eat(':') {
            if self.eat('P') || self.peek() == Some('<') {
                self.group_name()?;
            } else if !self.flags()? {
                self.depth -= 1;
                return Ok(None);
            }
        }
        let inner = self.alternation()?;
        self.fold = saved_fold;
        if !self.eat(')') {
            return Err("unclosed group".into());
        }
        self.depth -= 1;
        Ok(Some(inner))
    }

    /// After `(?P` or `(?`: `<name>`, each name used once.
    fn group_name(&mut self) -> Result<(), String> {
        if !self.eat('<') {
            return Err("invalid group name".into());
        }
        let name_start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += 1;
        }
        let name: String = self
            .chars
            .get(name_start..self.pos)
            .unwrap_or_default()
            .iter()
            .collect();
        if name.is_empty() || !self.eat('>') {
            return Err("invalid group name".into());
        }
        if self.names.contains(&name) {
            return Err(format!("duplicate group name `{name}`"));
        }
        self.names.push(name);
        Ok(())
    }

    /// After `(?`: flags, only `i` (as `i` or `-i`; not empty, not ending in
    /// `-`), then `:` (true: a group follows) or `)` (false: flags alone).
    fn flags(&mut self) -> Result<bool, String> {
        let (mut on, mut seen) = (true, false);
        loop {
            match self.peek() {
                Some('i') => {
                    self.fold = on;
                    seen = true;
                }
                Some('-') if on => {
                    on = false;
                    seen = false;
                }
                Some(')' | ':') if !seen => return Err("empty or unfinished flags".into()),
                Some(')') => {
                    self.pos += 1;
                    return Ok(false);
                }
                Some(':') => {
                    self.pos += 1;
                    return Ok(true);
                }
                Some(c) => return Err(format!("unsupported flag or group `(?{c}`")),
                None => return Err("unclosed group".into()),
            }
            self.pos += 1;
        }
    }

    /// After `\`: an escape, as an atom or (in a class) a set.
    fn escape(&mut self, in_class: bool) -> Result<Node, String> {
        let Some(c) = self.peek() else {
            return Err("incomplete escape at the end".into());
        };
        self.pos += 1;
        let set = |ranges: &[(char, char)], negated: bool| {
            Node::Set(if negated {
                complement(ranges)
            } else {
                ranges.to_vec()
            })
        };
        Ok(match c {
            'd' => set(DIGIT, false),
            'D' => set(DIGIT, true),
            'w' => set(WORD, false),
            'W' => set(WORD, true),
            's' => set(SPACE, false),
            'S' => set(SPACE, true),
            't' => self.literal('\t'),
            'n' => self.literal('\n'),
            'r' => self.literal('\r'),
            'f' => self.literal('\u{c}'),
            'v' => self.literal('\u{b}'),
            'x' => {
                let c = self.hex_escape()?;
                self.literal(c)
            }
            c if c.is_ascii_punctuation() => self.literal(c),
            'b' | 'B' | 'A' | 'z' if !in_class => {
                return Err(format!("unsupported assertion `\\{c}`"));
            }
            c => return Err(format!("unsupported escape `\\{c}`")),
        })
    }

    /// After `\x`: `HH` or `{H...}`.
    fn hex_escape(&mut self) -> Result<char, String> {
        let braced = self.eat('{');
        let mut value: u32 = 0;
        let mut digits = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(16)) {
            if !braced && digits == 2 {
                break;
            }
            value = value.saturating_mul(16).saturating_add(d);
            digits += 1;
            self.pos += 1;
        }
        if digits == 0 || (!braced && digits != 2) || (braced && !self.eat('}')) {
            return Err("invalid \\x escape".into());
        }
        char::from_u32(value).ok_or_else(|| "invalid \\x escape: not a character".into())
    }

    /// After `[`: a bracket class.
    fn class(&mut self) -> Result<Node, String> {
        // Escapes inside read as plain characters; case folding applies to
        // the whole class at the end.
        let fold = std::mem::replace(&mut self.fold, false);
        let class = self.class_items();
        self.fold = fold;
        let ranges = class?;
        let negated = ranges.0;
        let mut ranges = ranges.1;
        if self.fold {
            let mut folded = Vec::new();
            for &(lo, hi) in &ranges {
                for (a, b, shift) in [('a', 'z', -32i32), ('A', 'Z', 32)] {
                    let (l, h) = (lo.max(a), hi.min(b));
                    if l <= h {
                        let moved =
                            |c: char| char::from_u32((c as i32 + shift) as u32).unwrap_or(c);
                        folded.push((moved(l), moved(h)));
                    }
                }
            }
            ranges.extend(folded);
        }
        let ranges = normalize(ranges);
        Ok(Node::Set(if negated {
            complement(&ranges)
        } else {
            ranges
        }))
    }

    /// A bracket class's items: whether it is negated, and its ranges.
    fn class_items(&mut self) -> Result<(bool, Vec<(char, char)>), String> {
        let negated = self.eat('^');
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return Err("unclosed character class".into());
            };
            if c == ']' && !first {
                self.pos += 1;
                break;
            }
            first = false;
            if c == '[' {
                return Err(
                    "`[` inside a class: escape it as `\\[` (nested and POSIX classes are not supported)"
                        .into(),
                );
            }
            self.pos += 1;
            let lo = if c == '\\' {
                match self.escape(true)? {
                    Node::Set(set) if set.len() == 1 && set.first().is_some_and(|r| r.0 == r.1) => {
                        set.first().map_or(c, |r| r.0)
                    }
                    Node::Set(set) => {
                        if self.peek() == Some('-')
                            && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']')
                        {
                            return Err(
                                "a class range must start and end with one character".into()
                            );
                        }
                        ranges.extend(set);
                        continue;
                    }
                    _ => return Err("invalid escape in a class".into()),
                }
            } else {
                c
            };
            // A range `a-z`, unless the `-` is last.
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']') {
                self.pos += 1;
                let Some(h) = self.peek() else {
                    return Err("unclosed character class".into());
                };
                self.pos += 1;
                let hi = if h == '\\' {
                    match self.escape(true)? {
                        Node::Set(set)
                            if set.len() == 1 && set.first().is_some_and(|r| r.0 == r.1) =>
                        {
                            set.first().map_or(h, |r| r.0)
                        }
                        _ => return Err("invalid range end in a class".into()),
                    }
                } else {
                    h
                };
                if hi < lo {
                    return Err(format!("invalid class range {lo}-{hi}"));
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        Ok((negated, ranges))
    }
}

/// Sorts and merges ranges.
fn normalize(mut ranges: Vec<(char, char)>) -> Vec<(char, char)> {
    ranges.sort_unstable();
    let mut out: Vec<(char, char)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1).saturating_add(1) => {
                last.1 = last.1.max(hi);
            }
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Every character not in `ranges` (sorted, merged), skipping surrogates.
fn complement(ranges: &[(char, char)]) -> Vec<(char, char)> {
    let ranges = normalize(ranges.to_vec());
    let mut out = Vec::new();
    let mut next = 0u32;
    for &(lo, hi) in &ranges {
        push_range(
            &mut out,
            next,
            u32::from(lo).wrapping_sub(1),
            u32::from(lo) > next,
        );
        next = u32::from(hi) + 1;
    }
    push_range(
        &mut out,
        next,
        u32::from(char::MAX),
        next <= u32::from(char::MAX),
    );
    out
}

fn push_range(out: &mut Vec<(char, char)>, lo: u32, hi: u32, any: bool) {
    if !any {
        return;
    }
    // Split around the surrogate gap, which holds no characters.
    for (a, b) in [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)] {
        if let (Some(a), Some(b)) = (char::from_u32(a), char::from_u32(b)) {
            if a <= b {
                out.push((a, b));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Compiling.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Compiler {
    program: Vec<Inst>,
    ranges: Vec<(char, char)>,
    /// Nodes compiled so far. A repetition of something that compiles to
    /// nothing (`(?:){1000}{1000}{1000}`) adds no instruction, so the
    /// instruction bound alone would not bound the time compiling takes.
    steps: usize,
}

impl Compiler {
    fn push(&mut self, inst: Inst) -> Result<usize, String> {
        if self.program.len() >= MAX_INSTRUCTIONS {
            return Err(format!(
                "compiles to more than {MAX_INSTRUCTIONS} instructions; shorten it or lower its repetition counts"
            ));
        }
        self.program.push(inst);
        Ok(self.program.len() - 1)
    }

    fn patch(&mut self, at: usize, inst: Inst) {
        if let Some(slot) = self.program.get_mut(at) {
            *slot = inst;
        }
    }

    fn node(&mut self, node: &Node) -> Result<(), String> {
        self.steps += 1;
        if self.steps > 8 * MAX_INSTRUCTIONS {
            return Err("too large once its repetitions are expanded".into());
        }
        match node {
            Node::Empty => {}
            Node::Set(set) => {
                let from = self.ranges.len();
                self.ranges.extend_from_slice(set);
                let to = self.ranges.len();
                self.push(Inst::Set { from, to })?;
            }
            Node::Start => {
                self.push(Inst::AssertStart)?;
            }
            Node::End => {
                self.push(Inst::AssertEnd)?;
            }
            Node::Concat(items) => {
                for item in items {
                    self.node(item)?;
                }
            }
            Node::Alternate(branches) => {
                // split L1, next; L1: a; jump end; next: split L2, ...; last
                let mut jumps = Vec::new();
                let last = branches.len().saturating_sub(1);
                for (i, branch) in branches.iter().enumerate() {
                    if i == last {
                        self.node(branch)?;
                    } else {
                        let split = self.push(Inst::Split(0, 0))?;
                        self.node(branch)?;
                        jumps.push(self.push(Inst::Jump(0))?);
                        let next = self.program.len();
                        self.patch(split, Inst::Split(split + 1, next));
                    }
                }
                let end = self.program.len();
                for jump in jumps {
                    self.patch(jump, Inst::Jump(end));
                }
            }
            Node::Repeat { node, min, max } => {
                for _ in 0..*min {
                    self.node(node)?;
                }
                match max {
                    None => {
                        // loop: split body, out; body; jump loop
                        let split = self.push(Inst::Split(0, 0))?;
                        self.node(node)?;
                        self.push(Inst::Jump(split))?;
                        let out = self.program.len();
                        self.patch(split, Inst::Split(split + 1, out));
                    }
                    Some(max) => {
                        // (body (body (...)?)?)? for the optional copies
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Split(0, 0))?);
                            self.node(node)?;
                        }
                        let out = self.program.len();
                        for split in splits {
                            self.patch(split, Inst::Split(split + 1, out));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
