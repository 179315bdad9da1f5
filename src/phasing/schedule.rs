//! The schedule language: algorithm sequences written left to right, in the style of
//! cohere (`2*(20*ER + 180*HIO)`) and PyNX (`ER**5`).
//!
//! ```text
//! schedule := seq
//! seq      := term ('+' term)*
//! term     := INT '*' term | factor ('**' INT)?
//! factor   := NAME ['(' [beta '='] NUMBER ')'] | '(' seq ')'
//! NAME     := HIO | ER | RAAR | ML | SW | SHRINKWRAP      (case-insensitive)
//! ```
//! ```
//! use cdiphase::phasing::schedule::{Algorithm, Schedule, Step};
//! let s = Schedule::parse("2000*(5*HIO + 5*ER)").unwrap();
//! assert_eq!(s.iterations(), 20_000);
//! assert_eq!(s.steps[0], Step::Iterate { alg: Algorithm::HIO, beta: None, count: 5 });
//! let e = Schedule::parse("5*HIO + 5*EER").unwrap_err();
//! assert!(e.to_string().contains("position 10"));
//! ```
//!
//! `SW` is one shrinkwrap support update at that point of the run. `ML` is one iteration of
//! Poisson maximum-likelihood refinement (conjugate gradient on the object inside the
//! support, see [`crate::phasing::program::Op::Ml`]); `ML**50` after the projections polishes
//! the result against the Poisson likelihood of the measured pixels. `HIO(0.7)` or
//! `RAAR(beta=0.8)` override the global `--beta` for that step. Examples:
//! `2000*(5*HIO + 5*ER)` (the paper's run), `100*(SW + 50*HIO) + 200*ER`, `(ER**5*HIO**45)**20`
//! is *not* accepted: PyNX multiplies operators right to left, which reads the wrong way
//! round here, so `*` between two algorithms is an error that points to `+`.

use crate::{Error, Result};

/// An iterative phase-retrieval algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Algorithm {
    /// Error reduction (Gerchberg-Saxton / Fienup ER).
    ER,
    /// Hybrid input-output (Fienup), feedback `beta`.
    HIO,
    /// Relaxed averaged alternating reflections (Luke), relaxation `beta`.
    RAAR,
}

impl Algorithm {
    /// Canonical spelling.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ER => "ER",
            Algorithm::HIO => "HIO",
            Algorithm::RAAR => "RAAR",
        }
    }
}

/// One flattened step of a schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// `count` iterations of `alg`; `beta` overrides the global value where given.
    Iterate {
        alg: Algorithm,
        beta: Option<f32>,
        count: u64,
    },
    /// One shrinkwrap support update.
    Shrinkwrap,
    /// `count` iterations of Poisson maximum-likelihood refinement (conjugate gradient).
    Ml { count: u64 },
}

/// Upper bound on the total number of iterations a schedule may expand to.
pub const MAX_ITERATIONS: u64 = 100_000_000;

/// Upper bound on the steps (runs of one algorithm, ML sections, shrinkwrap updates) a
/// schedule may expand to (240 MB at most): `50000000*(HIO + ER)` is within
/// [`MAX_ITERATIONS`] but would flatten to 10^8 steps (gigabytes), and shrinkwrap steps
/// count no iterations at all (`10^8*(10^8*SW + HIO)`), so the expansion is bounded by
/// itself. Long runs in the paper's style fit: `1000000*(5*HIO + 5*ER)` is 2 million steps.
pub const MAX_STEPS: u64 = 10_000_000;

/// A parsed schedule: the input text and its flattened steps (runs of the same algorithm
/// with the same beta merged).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub text: String,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Parse a schedule string.
    pub fn parse(text: &str) -> Result<Schedule> {
        let mut p = Parser {
            src: text,
            bytes: text.as_bytes(),
            pos: 0,
        };
        p.skip_ws();
        if p.pos == p.bytes.len() {
            return Err(p.err("empty schedule: expected e.g. '2000*(5*HIO + 5*ER)'"));
        }
        let node = p.seq()?;
        p.skip_ws();
        if p.pos != p.bytes.len() {
            let c = p.bytes[p.pos] as char;
            let msg = if c == '*' {
                "'*' may only follow a repeat count (write '5*HIO + 5*ER', not 'HIO*ER')"
                    .to_string()
            } else if c == ')' {
                "unmatched ')'".to_string()
            } else {
                format!("unexpected '{c}'; expected '+' or the end")
            };
            return Err(p.err(&msg));
        }
        let total = node.iterations();
        if total > MAX_ITERATIONS {
            return Err(Error::Schedule {
                input: text.to_string(),
                pos: 0,
                msg: format!("expands to {total} iterations, more than the limit {MAX_ITERATIONS}"),
                caret: "^".into(),
            });
        }
        let nsteps = node.steps();
        if nsteps > MAX_STEPS {
            return Err(Error::Schedule {
                input: text.to_string(),
                pos: 0,
                msg: format!(
                    "expands to {nsteps} steps (runs of one algorithm and shrinkwrap updates), \
                     more than the limit {MAX_STEPS}: repeat single algorithms ('5000*HIO') \
                     rather than long alternations"
                ),
                caret: "^".into(),
            });
        }
        let mut steps = Vec::new();
        node.flatten(&mut steps);
        if !steps
            .iter()
            .any(|s| matches!(s, Step::Iterate { .. } | Step::Ml { .. }))
        {
            return Err(Error::Schedule {
                input: text.to_string(),
                pos: 0,
                msg: "the schedule has no iterations (only shrinkwrap steps)".into(),
                caret: "^".into(),
            });
        }
        Ok(Schedule {
            text: text.to_string(),
            steps,
        })
    }

    /// Total number of iterations.
    pub fn iterations(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Iterate { count, .. } | Step::Ml { count } => *count,
                Step::Shrinkwrap => 0,
            })
            .sum()
    }

    /// Whether the schedule contains any ER step.
    pub fn has(&self, alg: Algorithm) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Iterate { alg: a, .. } if *a == alg))
    }
}

enum Node {
    Alg(Algorithm, Option<f32>),
    Ml,
    Shrinkwrap,
    Seq(Vec<Node>),
    Repeat(u64, Box<Node>),
}

impl Node {
    fn iterations(&self) -> u64 {
        match self {
            Node::Alg(..) | Node::Ml => 1,
            Node::Shrinkwrap => 0,
            Node::Seq(v) => v.iter().fold(0u64, |a, n| a.saturating_add(n.iterations())),
            Node::Repeat(k, n) => k.saturating_mul(n.iterations()),
        }
    }

    /// An upper bound on the steps [`Node::flatten`] pushes (runs of one algorithm are
    /// merged there, so it may push fewer).
    fn steps(&self) -> u64 {
        match self {
            Node::Alg(..) | Node::Ml | Node::Shrinkwrap => 1,
            Node::Seq(v) => v.iter().fold(0u64, |a, n| a.saturating_add(n.steps())),
            Node::Repeat(_, n) if matches!(**n, Node::Alg(..) | Node::Ml) => 1,
            Node::Repeat(k, n) => k.saturating_mul(n.steps()),
        }
    }

    fn flatten(&self, out: &mut Vec<Step>) {
        match self {
            Node::Alg(alg, beta) => push(out, *alg, *beta, 1),
            Node::Ml => push_ml(out, 1),
            Node::Shrinkwrap => out.push(Step::Shrinkwrap),
            Node::Seq(v) => v.iter().for_each(|n| n.flatten(out)),
            Node::Repeat(k, n) => {
                // A repeat of a single algorithm becomes one step, not k steps.
                if let Node::Alg(alg, beta) = **n {
                    push(out, alg, beta, *k);
                } else if let Node::Ml = **n {
                    push_ml(out, *k);
                } else {
                    for _ in 0..*k {
                        n.flatten(out);
                    }
                }
            }
        }
    }
}

fn push(out: &mut Vec<Step>, alg: Algorithm, beta: Option<f32>, count: u64) {
    if count == 0 {
        return;
    }
    if let Some(Step::Iterate {
        alg: a,
        beta: b,
        count: c,
    }) = out.last_mut()
    {
        if *a == alg && *b == beta {
            *c += count;
            return;
        }
    }
    out.push(Step::Iterate { alg, beta, count });
}

fn push_ml(out: &mut Vec<Step>, count: u64) {
    if count == 0 {
        return;
    }
    if let Some(Step::Ml { count: c }) = out.last_mut() {
        *c += count;
        return;
    }
    out.push(Step::Ml { count });
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> Error {
        let col = self.src[..self.pos.min(self.src.len())].chars().count();
        Error::Schedule {
            input: self.src.to_string(),
            pos: self.pos,
            msg: msg.to_string(),
            caret: format!("{}^", " ".repeat(col)),
        }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        if self.src[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn seq(&mut self) -> Result<Node> {
        let mut v = vec![self.term()?];
        while self.eat("+") {
            v.push(self.term()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            Node::Seq(v)
        })
    }

    fn integer(&mut self) -> Result<u64> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        let s = &self.src[start..self.pos];
        s.parse::<u64>().map_err(|_| {
            self.pos = start;
            self.err("repeat count too large")
        })
    }

    fn term(&mut self) -> Result<Node> {
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                let k = self.integer()?;
                if !self.eat("*") || self.src[self.pos..].starts_with('*') {
                    self.pos = start;
                    return Err(
                        self.err("a repeat count must be followed by '*' and a step, e.g. '5*HIO'")
                    );
                }
                let inner = self.term()?;
                Ok(Node::Repeat(k, Box::new(inner)))
            }
            _ => {
                let f = self.factor()?;
                if self.eat("**") {
                    if !matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                        return Err(self.err("expected a repeat count after '**'"));
                    }
                    let k = self.integer()?;
                    return Ok(Node::Repeat(k, Box::new(f)));
                }
                Ok(f)
            }
        }
    }

    fn factor(&mut self) -> Result<Node> {
        match self.peek() {
            None => {
                Err(self
                    .err("unexpected end: expected an algorithm (HIO, ER, RAAR, ML, SW) or '('"))
            }
            Some(b'(') => {
                self.pos += 1;
                let inner = self.seq()?;
                if !self.eat(")") {
                    return Err(self.err("expected ')'"));
                }
                Ok(inner)
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.bytes.len()
                    && (self.bytes[self.pos].is_ascii_alphanumeric()
                        || self.bytes[self.pos] == b'_')
                {
                    self.pos += 1;
                }
                let word = self.src[start..self.pos].to_ascii_uppercase();
                let alg = match word.as_str() {
                    "HIO" => Algorithm::HIO,
                    "ER" => Algorithm::ER,
                    "RAAR" => Algorithm::RAAR,
                    "SW" | "SHRINKWRAP" | "SUP" => return Ok(Node::Shrinkwrap),
                    "ML" => {
                        if self.peek() == Some(b'(') {
                            return Err(self.err("ML takes no parameter"));
                        }
                        return Ok(Node::Ml);
                    }
                    _ => {
                        self.pos = start;
                        return Err(self.err(&format!(
                            "unknown step '{}': expected HIO, ER, RAAR, ML or SW",
                            &self.src[start..start + word.len()]
                        )));
                    }
                };
                let mut beta = None;
                if self.peek() == Some(b'(') {
                    self.pos += 1;
                    self.eat("beta");
                    self.eat("=");
                    self.skip_ws();
                    let nstart = self.pos;
                    while self.pos < self.bytes.len()
                        && (self.bytes[self.pos].is_ascii_digit()
                            || b".eE-+".contains(&self.bytes[self.pos]))
                    {
                        self.pos += 1;
                    }
                    let b: f32 = self.src[nstart..self.pos].parse().map_err(|_| {
                        self.pos = nstart;
                        self.err("expected a number for beta, e.g. HIO(0.9)")
                    })?;
                    if !(b.is_finite() && b > 0.0 && b <= 2.0) || alg == Algorithm::ER {
                        self.pos = nstart;
                        return Err(self.err(if alg == Algorithm::ER {
                            "ER takes no beta"
                        } else {
                            "beta must be in (0, 2]"
                        }));
                    }
                    if !self.eat(")") {
                        return Err(self.err("expected ')' after beta"));
                    }
                    beta = Some(b);
                }
                Ok(Node::Alg(alg, beta))
            }
            Some(c) => Err(self.err(&format!(
                "unexpected '{}': expected an algorithm (HIO, ER, RAAR, ML, SW) or '('",
                c as char
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(alg: Algorithm, count: u64) -> Step {
        Step::Iterate {
            alg,
            beta: None,
            count,
        }
    }

    #[test]
    fn paper_schedule() {
        let s = Schedule::parse("2000*(5*HIO + 5*ER)").unwrap();
        assert_eq!(s.iterations(), 20_000);
        assert_eq!(s.steps.len(), 4000);
        assert_eq!(s.steps[0], it(Algorithm::HIO, 5));
        assert_eq!(s.steps[1], it(Algorithm::ER, 5));
    }

    #[test]
    fn merges_and_powers() {
        let s = Schedule::parse("hio + 2*HIO + ER**3 + sw + 3 * ( RAAR(beta=0.75) )").unwrap();
        assert_eq!(
            s.steps,
            vec![
                it(Algorithm::HIO, 3),
                it(Algorithm::ER, 3),
                Step::Shrinkwrap,
                Step::Iterate {
                    alg: Algorithm::RAAR,
                    beta: Some(0.75),
                    count: 3
                }
            ]
        );
        let s = Schedule::parse("2*(SW + 3*HIO(0.7)) + 0*ER").unwrap();
        assert_eq!(s.iterations(), 6);
        assert_eq!(s.steps.len(), 4);
    }

    #[test]
    fn ml_steps_merge_and_count() {
        let s = Schedule::parse("HIO**10 + ER**5 + ml**3 + 2*ML + SW + ML").unwrap();
        assert_eq!(
            s.steps,
            vec![
                it(Algorithm::HIO, 10),
                it(Algorithm::ER, 5),
                Step::Ml { count: 5 },
                Step::Shrinkwrap,
                Step::Ml { count: 1 }
            ]
        );
        assert_eq!(s.iterations(), 21);
        assert_eq!(Schedule::parse("ML**50").unwrap().iterations(), 50);
        assert!(Schedule::parse("2*(5*HIO + ML)").unwrap().steps.len() == 4);
    }

    #[test]
    fn errors_name_the_position() {
        let cases = [
            ("", 0),
            ("5*", 2),
            ("5*FOO", 2),
            ("(5*HIO", 6),
            ("5*HIO)", 5),
            ("HIO*ER", 3),
            ("5 HIO", 0),
            ("ER(0.5)", 3),
            ("HIO(3)", 4),
            ("5*HIO + ", 8),
            ("SW", 0),
            ("ML(0.5)", 2),
            ("99999999999*(HIO+ER)", 0),
        ];
        for (text, pos) in cases {
            match Schedule::parse(text) {
                Err(Error::Schedule { pos: p, .. }) => assert_eq!(p, pos, "{text}"),
                other => panic!("{text}: expected a schedule error, got {other:?}"),
            }
        }
        let msg = Schedule::parse("5*HIO + 5*EER").unwrap_err().to_string();
        assert!(
            msg.contains("unknown step 'EER'") && msg.contains("position 10"),
            "{msg}"
        );
    }

    /// Expansions bounded by their own size, not only by iterations: long alternations
    /// and repeated shrinkwrap steps (which count no iteration) are refused at once with
    /// the step count (the fuzz test hung on `10^8*(10^8*SW + HIO)`-like strings), and a
    /// long but allowed run of shrinkwrap steps compiles in one pass.
    #[test]
    fn expansions_past_the_step_limit_are_refused() {
        for text in [
            "100000000*(100000000*SW + HIO)",
            "50000000*(HIO + ER)",
            "10000001*SW + HIO",
            "99999999999999999999*(HIO + SW)",
        ] {
            let e = Schedule::parse(text).map(|_| ()).unwrap_err().to_string();
            assert!(
                e.contains("steps") || e.contains("iterations") || e.contains("too large"),
                "{text}: {e}"
            );
        }
        let e = Schedule::parse("6000000*(HIO + ER)")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("12000000 steps") && e.contains("limit 10000000"),
            "{e}"
        );
        // within the limit: 999,999 shrinkwrap steps then one HIO
        let s = Schedule::parse("999999*SW + HIO").unwrap();
        assert_eq!(s.steps.len(), 1_000_000);
        let p = crate::phasing::program::Program::compile(
            &s,
            0.9,
            &crate::phasing::program::ShrinkwrapConfig::default(),
            crate::phasing::program::Recording::EndOfErSections,
        )
        .unwrap();
        assert_eq!(p.iterations, 1);
    }
}
