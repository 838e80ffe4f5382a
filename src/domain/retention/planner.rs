//! The retention planner: the rules of the module documentation in
//! [`super`], applied to one definition's versions (or many, across the
//! machine's cores). Pure: no I/O, no clock but the `now` it is given.

use std::ops::Bound;

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    Action, DefinitionStatus, DeprecationCause, GalleryVersion, ImageVersion, InUseSet, Plan,
    PlanInput, PlanItem, Reason, RetentionPolicy, Skip,
};

/// Plans one definition. See the module documentation for the rules; every
/// version must belong to `definition_id` (see [`super::belongs_to`]).
pub fn plan(
    definition_id: &str,
    versions: &[GalleryVersion],
    policy: &RetentionPolicy,
    in_use: &InUseSet,
    status: DefinitionStatus,
    now: DateTime<Utc>,
) -> Plan {
    Planner::default().plan(
        PlanInput {
            definition_id,
            versions,
            policy,
            status,
        },
        in_use,
        now,
    )
}

/// Definitions below which [`plan_many`] stays on the calling thread.
pub(super) const PARALLEL_FROM: usize = 256;

/// Plans many definitions against one in-use set, in input order. Each
/// worker reuses its planner's scratch buffers, so the only allocations are
/// the plans themselves. Definitions are independent, so a large tenant is
/// split across the machine's cores (scoped threads: no runtime, no I/O,
/// still a pure function of its inputs).
pub fn plan_many<'a>(
    inputs: impl IntoIterator<Item = PlanInput<'a>>,
    in_use: &InUseSet,
    now: DateTime<Utc>,
) -> Vec<Plan> {
    let inputs: Vec<PlanInput<'a>> = inputs.into_iter().collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if workers < 2 || inputs.len() < PARALLEL_FROM {
        let mut planner = Planner::default();
        return inputs
            .into_iter()
            .map(|input| planner.plan(input, in_use, now))
            .collect();
    }
    let chunk = inputs.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut planner = Planner::default();
                    part.iter()
                        .map(|&input| planner.plan(input, in_use, now))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a planning thread panicked"))
            .collect()
    })
}

/// A distinct version with its copies merged on the protective side.
#[derive(Debug, Clone, Copy)]
struct Facts {
    version: ImageVersion,
    /// `None` when any copy lacks a published date.
    published: Option<DateTime<Utc>>,
    /// Every copy is excluded from latest.
    excluded: bool,
    /// The latest end of life any copy gives.
    end_of_life: Option<DateTime<Utc>>,
    /// Every copy has an end of life.
    end_of_life_everywhere: bool,
    blocked: bool,
    pinned: bool,
}

impl Facts {
    fn deprecated_until(&self) -> Option<DateTime<Utc>> {
        if self.excluded && self.end_of_life_everywhere {
            self.end_of_life
        } else {
            None
        }
    }
}

/// What the rules read of one listed version, copied out in listing order.
#[derive(Debug, Clone, Copy)]
struct Row {
    version: ImageVersion,
    published: Option<DateTime<Utc>>,
    end_of_life: Option<DateTime<Utc>>,
    excluded: bool,
    blocked: bool,
    pinned: bool,
}

/// Whether `tags` has `key`. Lengths are compared before bytes, so a key's
/// text is only read when its length matches: on a large listing the text
/// of every tag key is a separate cache miss, and that dominated planning.
fn has_tag(tags: &std::collections::BTreeMap<String, String>, key: &str) -> bool {
    tags.keys().any(|k| k.len() == key.len() && k == key)
}

#[derive(Default)]
struct Planner {
    /// One row per listed version, in listing order.
    rows: Vec<Row>,
    /// `version key << 32 | index into the input`, sorted newest first. The
    /// 96-bit version key and the 32-bit index fill one `u128` exactly, so
    /// the sort moves 16-byte integers and compares nothing else.
    order: Vec<u128>,
    facts: Vec<Facts>,
    /// Versions of this definition referenced by id, sorted.
    in_use: Vec<ImageVersion>,
    prefix: String,
}

fn days(n: u32) -> TimeDelta {
    TimeDelta::days(i64::from(n))
}

impl Planner {
    fn plan(&mut self, input: PlanInput<'_>, in_use: &InUseSet, now: DateTime<Utc>) -> Plan {
        let PlanInput {
            definition_id,
            versions,
            policy,
            status,
        } = input;
        // More than u32::MAX versions of one definition cannot be listed
        // (the gallery allows 10,000 per region), so the index fits.
        debug_assert!(u32::try_from(versions.len()).is_ok());
        let index = |packed: u128| (packed as u32) as usize;

        // Read every listed version once, in listing order: sequential reads
        // and independent tag lookups that the CPU can overlap. Everything
        // after this works on the compact rows, which stay in cache.
        self.order.clear();
        self.rows.clear();
        for (i, v) in versions.iter().enumerate() {
            self.order.push((v.version.key() << 32) | i as u128);
            self.rows.push(Row {
                version: v.version,
                published: v.published,
                end_of_life: v.end_of_life,
                excluded: v.exclude_from_latest,
                blocked: v.block_deletion_before_end_of_life,
                pinned: has_tag(&v.tags, &policy.pin_tag),
            });
        }
        self.order.sort_unstable_by_key(|&k| std::cmp::Reverse(k));

        self.facts.clear();
        for group in self.order.chunk_by(|a, b| a >> 32 == b >> 32) {
            let mut f = Facts {
                version: self.rows[index(group[0])].version,
                published: self.rows[index(group[0])].published,
                excluded: true,
                end_of_life: None,
                end_of_life_everywhere: true,
                blocked: false,
                pinned: false,
            };
            for &packed in group {
                let r = &self.rows[index(packed)];
                f.published = match (f.published, r.published) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (None, _) | (_, None) => None,
                };
                f.excluded &= r.excluded;
                f.end_of_life = f.end_of_life.max(r.end_of_life);
                f.end_of_life_everywhere &= r.end_of_life.is_some();
                f.blocked |= r.blocked;
                f.pinned |= r.pinned;
            }
            self.facts.push(f);
        }

        let mut items = Vec::with_capacity(self.facts.len());
        let skip = match status {
            DefinitionStatus::Idle => None,
            DefinitionStatus::Publishing => Some(Skip::Publishing),
            DefinitionStatus::FailedWhilePublishing => Some(Skip::FailedWhilePublishing),
        };
        if let Some(skip) = &skip {
            items.extend(self.facts.iter().map(|f| PlanItem {
                version: f.version,
                action: Action::Keep,
                reason: Reason::Skipped(skip.clone()),
            }));
        } else {
            let latest_referenced =
                self.collect_in_use(definition_id.trim_end_matches('/'), in_use);
            self.decide(policy, latest_referenced, now, &mut items);
        }
        Plan {
            definition_id: definition_id.to_string(),
            skipped: skip,
            items,
        }
    }

    /// Fills `self.in_use` with the versions of `definition` that consumers
    /// reference by id, and says whether the definition's latest is in use.
    ///
    /// One range scan of the in-use set per definition instead of one
    /// formatted id per version. Any id under the definition whose last part
    /// is not a version (`…/versions/latest`) counts as a reference to the
    /// latest: when unsure, protect.
    fn collect_in_use(&mut self, definition: &str, in_use: &InUseSet) -> bool {
        self.in_use.clear();
        self.prefix.clear();
        self.prefix.push_str(definition);
        self.prefix.make_ascii_lowercase();
        let mut latest_referenced = in_use.definitions.contains(self.prefix.as_str());
        self.prefix.push_str("/versions/");
        let from = (Bound::Included(self.prefix.as_str()), Bound::Unbounded);
        for id in in_use.versions.range::<str, _>(from) {
            let Some(rest) = id.strip_prefix(self.prefix.as_str()) else {
                break;
            };
            match rest.parse::<ImageVersion>() {
                Ok(v) => self.in_use.push(v),
                Err(_) => latest_referenced = true,
            }
        }
        // A shared or community reference kiln could not map to a gallery
        // names only the definition: all of its versions stay.
        if in_use.uses_by_name(definition) {
            self.in_use.extend(self.facts.iter().map(|f| f.version));
            latest_referenced = true;
        }
        self.in_use.sort_unstable();
        latest_referenced
    }

    fn decide(
        &self,
        policy: &RetentionPolicy,
        latest_referenced: bool,
        now: DateTime<Utc>,
        items: &mut Vec<PlanItem>,
    ) {
        // Thresholds computed once. A threshold before the first representable
        // instant means nothing is that old.
        let min_age_cutoff = now.checked_sub_signed(days(policy.min_age_days));
        let max_age_cutoff = policy
            .max_age_days
            .map(|d| (d, now.checked_sub_signed(days(d))));
        let grace_end = now
            .checked_add_signed(days(policy.deprecate.grace_days))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let keep_latest = policy.keep_latest as usize;
        let latest = self.facts.iter().position(|f| !f.excluded);

        let mut deletions = 0usize;
        for (rank, f) in self.facts.iter().enumerate() {
            let keep = |reason| (Action::Keep, reason);
            let expired = |published: DateTime<Utc>| match max_age_cutoff {
                Some((d, Some(cutoff))) if published < cutoff => Some(d),
                Some((_, Some(_))) | Some((_, None)) | None => None,
            };
            let deprecate = |cause| {
                // Never bring an end of life forward (see module docs).
                let end_of_life = f.end_of_life.map_or(grace_end, |e| e.max(grace_end));
                (
                    Action::Deprecate { end_of_life },
                    Reason::Deprecating { cause, end_of_life },
                )
            };

            let (action, reason) = if Some(rank) == latest {
                keep(Reason::CurrentLatest {
                    referenced_by_definition: latest_referenced,
                })
            } else if policy.protect_in_use && self.in_use.binary_search(&f.version).is_ok() {
                keep(Reason::InUse)
            } else if f.pinned {
                keep(Reason::Pinned {
                    tag: policy.pin_tag.clone(),
                })
            } else if let Some(published) = f.published {
                if min_age_cutoff.is_none_or(|cutoff| published > cutoff) {
                    keep(Reason::YoungerThanMinAge {
                        min_age_days: policy.min_age_days,
                    })
                } else if rank < keep_latest {
                    match (expired(published), f.deprecated_until()) {
                        (None, _) => keep(Reason::AmongNewest {
                            keep_latest: policy.keep_latest,
                        }),
                        (Some(max_age_days), Some(_)) => keep(Reason::DeprecatedAmongNewest {
                            keep_latest: policy.keep_latest,
                            max_age_days,
                        }),
                        (Some(max_age_days), None) => {
                            deprecate(DeprecationCause::Expired { max_age_days })
                        }
                    }
                } else {
                    match f.deprecated_until() {
                        Some(end_of_life) if now >= end_of_life => {
                            deletions += 1;
                            (Action::Delete, Reason::GraceOver { end_of_life })
                        }
                        Some(end_of_life) => keep(Reason::GraceRunning {
                            end_of_life,
                            deletion_blocked: f.blocked,
                        }),
                        None => deprecate(match expired(published) {
                            Some(max_age_days) => DeprecationCause::Expired { max_age_days },
                            None => DeprecationCause::Surplus {
                                keep_latest: policy.keep_latest,
                                min_age_days: policy.min_age_days,
                            },
                        }),
                    }
                }
            } else {
                keep(Reason::NoPublishedDate)
            };
            items.push(PlanItem {
                version: f.version,
                action,
                reason,
            });
        }

        // Items run newest first, so the deletions within the limit (oldest
        // first) are the last ones: turn the first `over` back into keeps.
        let mut over = deletions.saturating_sub(policy.max_deletes_per_run as usize);
        for item in items.iter_mut() {
            if over == 0 {
                break;
            }
            match item.action {
                Action::Delete => {
                    item.action = Action::Keep;
                    item.reason = Reason::DeleteLimitReached {
                        max_deletes_per_run: policy.max_deletes_per_run,
                    };
                    over -= 1;
                }
                Action::Keep | Action::Deprecate { .. } => {}
            }
        }
    }
}
