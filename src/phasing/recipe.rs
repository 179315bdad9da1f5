//! How the user's choices become a run's schedule, shrinkwrap, constraint and selection:
//! the measured default recipe where neither a schedule nor a shrinkwrap is given, and the
//! selection's defaults. One place, so that the command line and the Python package run
//! the same thing for the same arguments.

use super::missing::MissingCentre;
use super::population::{CullConfig, PopulationConfig, RestartConfig, Strategy};
use super::program::{Constraint, ShrinkwrapConfig};
use super::{
    RECIPE_CONSTRAINT, RECIPE_MERGE, RECIPE_MERGE_MIN_STARTS, RECIPE_SCHEDULE, RECIPE_SHRINKWRAP,
};
use crate::phasing::problem::{Criterion, Selection};
use crate::Result;

/// The schedule, shrinkwrap and constraint of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub schedule: String,
    pub shrinkwrap: Option<ShrinkwrapConfig>,
    pub constraint: Constraint,
    /// Whether this is the measured default recipe (neither schedule nor shrinkwrap given).
    pub default: bool,
}

/// Resolve the user's schedule, shrinkwrap and constraint (each `None` when not given):
/// without a schedule and a shrinkwrap, the measured default recipe
/// ([`RECIPE_SCHEDULE`], [`RECIPE_SHRINKWRAP`], [`RECIPE_CONSTRAINT`]); a shrinkwrap `none`
/// is no shrinkwrap; the constraint defaults to none outside the recipe. A given constraint
/// always wins.
pub fn resolve(
    schedule: Option<&str>,
    shrinkwrap: Option<&str>,
    constraint: Option<&str>,
) -> Result<Recipe> {
    let default = schedule.is_none() && shrinkwrap.is_none();
    let sw_text = match shrinkwrap {
        None if default => Some(RECIPE_SHRINKWRAP),
        Some(s) if s.trim().eq_ignore_ascii_case("none") => None,
        s => s,
    };
    let shrinkwrap = sw_text.map(ShrinkwrapConfig::parse).transpose()?;
    let constraint = match constraint {
        Some(c) => c.parse()?,
        None if default => RECIPE_CONSTRAINT,
        None => Constraint::None,
    };
    Ok(Recipe {
        schedule: schedule.unwrap_or(RECIPE_SCHEDULE).to_string(),
        shrinkwrap,
        constraint,
        default,
    })
}

/// How many of the best starts are merged (`--merge`): the given number, else
/// [`RECIPE_MERGE`] with the default recipe and at least [`RECIPE_MERGE_MIN_STARTS`]
/// starts (the measured configuration), else none.
pub fn merge(recipe: &Recipe, starts: usize, given: Option<usize>) -> usize {
    match given {
        Some(m) => m,
        None if recipe.default && starts >= RECIPE_MERGE_MIN_STARTS => RECIPE_MERGE,
        None => 0,
    }
}

/// The populations, restarts, culling, merge and missing-centre mode of a run from the
/// user's texts (`--population`, `--restart`, `--cull`, `--missing-centre`; `merge` as
/// [`merge`]): one parser for the command line and the Python package.
pub fn strategy(
    recipe: &Recipe,
    starts: usize,
    merge_given: Option<usize>,
    population: Option<&str>,
    restart: Option<&str>,
    cull: Option<&str>,
    missing_centre: Option<&str>,
) -> Result<Strategy> {
    Ok(Strategy {
        population: population.map(PopulationConfig::parse).transpose()?,
        restart: restart.map(RestartConfig::parse).transpose()?,
        merge: merge(recipe, starts, merge_given),
        cull: cull.map(CullConfig::parse).transpose()?,
        missing_centre: missing_centre
            .map(MissingCentre::parse)
            .transpose()?
            .unwrap_or_default(),
    })
}

/// The selection of the best start and the held-out fraction: `select` is fourier | llk |
/// free-llk; `free_fraction` defaults to 0.05 with free-llk (it needs held-out pixels) and
/// to 0 otherwise; `support_fraction` is the (min, max) admissible final support fraction
/// (checked with the rest of the problem by [`super::prepare`]).
pub fn selection(
    select: &str,
    free_fraction: Option<f32>,
    (min_fraction, max_fraction): (f32, f32),
) -> Result<(Selection, f32)> {
    let criterion: Criterion = select.parse()?;
    let free = free_fraction.unwrap_or(if criterion == Criterion::FreeLlk {
        0.05
    } else {
        0.0
    });
    Ok((
        Selection {
            criterion,
            min_fraction,
            max_fraction,
        },
        free,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_recipe_applies_only_without_schedule_and_shrinkwrap() {
        let r = resolve(None, None, None).unwrap();
        assert!(r.default);
        assert_eq!(r.schedule, RECIPE_SCHEDULE);
        assert_eq!(
            r.shrinkwrap,
            Some(ShrinkwrapConfig::parse(RECIPE_SHRINKWRAP).unwrap())
        );
        assert_eq!(r.constraint, RECIPE_CONSTRAINT);
        let r = resolve(Some("50*ER"), None, None).unwrap();
        assert!(!r.default && r.shrinkwrap.is_none() && r.constraint == Constraint::None);
        // a shrinkwrap alone keeps the recipe's schedule but not its constraint
        let r = resolve(None, Some("sigma=2,threshold=0.2,every=10"), None).unwrap();
        assert_eq!(r.schedule, RECIPE_SCHEDULE);
        assert_eq!(r.shrinkwrap.unwrap().sigma, (2.0, 2.0));
        assert_eq!(r.constraint, Constraint::None);
        let r = resolve(Some("10*HIO"), Some("NONE"), Some("real")).unwrap();
        assert!(r.shrinkwrap.is_none() && r.constraint == Constraint::Real);
        let r = resolve(None, Some("none"), None).unwrap();
        assert!(!r.default && r.shrinkwrap.is_none());
        assert!(resolve(None, Some("sigma=x"), None).is_err());
        assert!(resolve(None, None, Some("negative")).is_err());
    }

    #[test]
    fn the_recipe_merges_the_best_four_of_eight_or_more_starts() {
        let d = resolve(None, None, None).unwrap();
        assert_eq!(merge(&d, 8, None), RECIPE_MERGE);
        assert_eq!(merge(&d, 16, None), RECIPE_MERGE);
        assert_eq!(merge(&d, 7, None), 0);
        assert_eq!(merge(&d, 8, Some(0)), 0);
        assert_eq!(merge(&d, 8, Some(2)), 2);
        let own = resolve(Some("50*ER"), None, None).unwrap();
        assert_eq!(merge(&own, 8, None), 0);
        assert_eq!(merge(&own, 8, Some(3)), 3);
    }

    #[test]
    fn free_llk_holds_pixels_out_by_default() {
        let (s, f) = selection("free-llk", None, (1e-4, 0.7)).unwrap();
        assert_eq!(s.criterion, Criterion::FreeLlk);
        assert_eq!(f, 0.05);
        let (s, f) = selection("llk", Some(0.1), (0.0, 1.0)).unwrap();
        assert_eq!((s.criterion, f, s.max_fraction), (Criterion::Llk, 0.1, 1.0));
        assert_eq!(selection("fourier", None, (0.0, 0.5)).unwrap().1, 0.0);
        assert!(selection("best", None, (0.0, 0.5)).is_err());
    }
}
