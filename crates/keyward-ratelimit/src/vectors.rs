//! The window rule as one table: requests, their times, the plan's limits, and the
//! decision each request must get (allowed or not, remaining, reset, retry-after).
//! Every vector runs against [`LocalRateLimiter`] and against the Lua script through
//! [`RedisRateLimiter`] on a real Redis, so both implementations answer to this table
//! rather than to each other.
//!
//! Times are milliseconds after [`T0`], 12:00:00.500: second and minute buckets start
//! 500 ms before it, so a request at 0 counts in the minute window until 60 500 (its
//! second's bucket leaves 61 buckets later) and in the day window until 86 459 500 (its
//! minute's bucket leaves 1441 buckets later). Reset and retry-after are those instants
//! less the request's, in whole seconds rounded up. T0's month ends 388 799 500 ms after
//! it (2026-12-01 00:00 UTC, 388 800 s rounded up), and a month window counts from the
//! vector's `stored` count of T0's month (nothing stored for any other month).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_core::{AccountId, Limits};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::redis::tests::Fixture;
use crate::{LocalRateLimiter, RateDecision, RateLimiter, UsageFuture, UsageSource, Window};

/// Time zero of every vector.
const T0: OffsetDateTime = datetime!(2026-11-26 12:00:00.5 UTC);

/// One case: an account starting with nothing counted, its plan, what happens to it.
struct Vector {
    name: &'static str,
    limits: Limits,
    /// The account's requests of T0's month as storage holds them.
    stored: u64,
    steps: &'static [Step],
}

enum Step {
    /// `times` requests at `at` (ms after [`T0`]), each answered `expect`: repeats are
    /// for refusals, which change nothing.
    Acquire {
        at: i64,
        times: u32,
        expect: Option<RateDecision>,
    },
    /// `times` requests at `at`, each allowed (numbers not checked): fills a window.
    Fill { at: i64, times: u32 },
    /// `times` requests, the first at `at` and then one every `every` ms, each allowed.
    Spread { at: i64, every: i64, times: u32 },
    /// A look at `at` that counts nothing.
    Peek {
        at: i64,
        expect: Option<RateDecision>,
    },
    /// The account's plan changes: later steps use these limits.
    Plan(Limits),
}

const fn acquire(at: i64, expect: Option<RateDecision>) -> Step {
    Step::Acquire {
        at,
        times: 1,
        expect,
    }
}

const fn allowed(limit: u32, remaining: u32, reset_secs: u64) -> Option<RateDecision> {
    Some(RateDecision {
        allowed: true,
        limit,
        remaining,
        reset_secs,
        retry_after_secs: None,
        refused_by: None,
    })
}

/// A refusal by `window`; the window shown then has nothing left.
const fn refused(
    limit: u32,
    reset_secs: u64,
    retry_after_secs: u64,
    window: Window,
) -> Option<RateDecision> {
    Some(RateDecision {
        allowed: false,
        limit,
        remaining: 0,
        reset_secs,
        retry_after_secs: Some(retry_after_secs),
        refused_by: Some(window),
    })
}

const fn limits(per_minute: Option<u32>, per_day: Option<u32>) -> Limits {
    Limits::new(per_minute, per_day)
}

const fn monthly(per_minute: Option<u32>, per_day: Option<u32>, per_month: u32) -> Limits {
    Limits::new(per_minute, per_day).with_per_month(Some(per_month))
}

use Window::{Day, Minute, Month};

const VECTORS: &[Vector] = &[
    Vector {
        name: "a minute limit lets its requests through, then refuses until the oldest leaves",
        limits: limits(Some(10), None),
        stored: 0,
        steps: &[
            Step::Fill { at: 0, times: 9 },
            acquire(0, allowed(10, 0, 61)),
            Step::Acquire {
                at: 0,
                times: 3,
                expect: refused(10, 61, 61, Minute),
            },
            acquire(30_000, refused(10, 31, 31, Minute)),
            Step::Peek {
                at: 60_499,
                expect: refused(10, 1, 1, Minute),
            },
            acquire(60_500, allowed(10, 9, 61)),
        ],
    },
    Vector {
        name: "no doubled burst at a minute edge: a full window stays full across it",
        limits: limits(Some(5), None),
        stored: 0,
        steps: &[
            // 12:00:59.5, then 12:01:01.5: a fixed window would have started over.
            Step::Fill {
                at: 59_000,
                times: 5,
            },
            acquire(61_000, refused(5, 59, 59, Minute)),
            acquire(119_499, refused(5, 1, 1, Minute)),
            acquire(119_500, allowed(5, 4, 61)),
        ],
    },
    Vector {
        name: "the minute window rolls request by request",
        limits: limits(Some(3), None),
        stored: 0,
        steps: &[
            acquire(0, allowed(3, 2, 61)),
            acquire(20_000, allowed(3, 1, 41)),
            acquire(40_000, allowed(3, 0, 21)),
            acquire(59_000, refused(3, 2, 2, Minute)),
            // The request at 0 has left; the one at 20 000 is now the oldest.
            acquire(60_500, allowed(3, 0, 20)),
            acquire(60_500, refused(3, 20, 20, Minute)),
        ],
    },
    Vector {
        name: "a day limit counts in one-minute buckets",
        limits: limits(None, Some(3)),
        stored: 0,
        steps: &[
            acquire(0, allowed(3, 2, 86_460)),
            // Same minute bucket as the first: it leaves with it.
            acquire(1_000, allowed(3, 1, 86_459)),
            acquire(120_000, allowed(3, 0, 86_340)),
            acquire(3_600_000, refused(3, 82_860, 82_860, Day)),
            Step::Peek {
                at: 86_459_499,
                expect: refused(3, 1, 1, Day),
            },
            // Both requests of the first minute leave; the one at 120 000 is the oldest.
            acquire(86_459_500, allowed(3, 1, 120)),
        ],
    },
    Vector {
        name: "with both limits, the window with fewer requests left is shown",
        limits: limits(Some(10), Some(12)),
        stored: 0,
        steps: &[
            Step::Fill { at: 0, times: 10 },
            acquire(62_000, allowed(12, 1, 86_398)),
            acquire(62_000, allowed(12, 0, 86_398)),
            acquire(62_000, refused(12, 86_398, 86_398, Day)),
        ],
    },
    Vector {
        name: "a tie shows the minute; retry-after waits for every full window, which refuses",
        limits: limits(Some(5), Some(5)),
        stored: 0,
        steps: &[
            acquire(0, allowed(5, 4, 61)),
            Step::Fill { at: 0, times: 4 },
            acquire(0, refused(5, 61, 86_460, Day)),
            // The minute has room again, the day has none: the day is shown.
            acquire(60_500, refused(5, 86_399, 86_399, Day)),
        ],
    },
    Vector {
        name: "requests refused by the minute window do not count in the day window",
        limits: limits(Some(3), Some(5)),
        stored: 0,
        steps: &[
            Step::Fill { at: 0, times: 3 },
            Step::Acquire {
                at: 0,
                times: 5,
                expect: refused(3, 61, 61, Minute),
            },
            // Four counted in the day, not nine.
            acquire(61_000, allowed(5, 1, 86_399)),
        ],
    },
    Vector {
        name: "requests refused by the day window do not count in the minute window",
        limits: limits(Some(10), Some(2)),
        stored: 0,
        steps: &[
            Step::Fill { at: 0, times: 2 },
            Step::Acquire {
                at: 0,
                times: 4,
                expect: refused(2, 86_460, 86_460, Day),
            },
            Step::Plan(limits(Some(10), None)),
            Step::Peek {
                at: 0,
                expect: allowed(10, 8, 61),
            },
        ],
    },
    Vector {
        name: "peeks count nothing",
        limits: limits(Some(10), Some(100)),
        stored: 0,
        steps: &[
            Step::Peek {
                at: 0,
                expect: allowed(10, 10, 0),
            },
            acquire(0, allowed(10, 9, 61)),
            Step::Peek {
                at: 500,
                expect: allowed(10, 9, 60),
            },
            Step::Peek {
                at: 500,
                expect: allowed(10, 9, 60),
            },
            acquire(1_000, allowed(10, 8, 60)),
        ],
    },
    Vector {
        name: "a plan without limits gets no decision",
        limits: limits(None, None),
        stored: 0,
        steps: &[
            Step::Acquire {
                at: 0,
                times: 3,
                expect: None,
            },
            Step::Peek {
                at: 0,
                expect: None,
            },
        ],
    },
    Vector {
        name: "an unlimited minute window is neither counted nor shown",
        limits: limits(None, Some(5)),
        stored: 0,
        steps: &[
            acquire(0, allowed(5, 4, 86_460)),
            // Once limited, the minute window starts from nothing.
            Step::Plan(limits(Some(1), Some(5))),
            Step::Peek {
                at: 0,
                expect: allowed(1, 1, 0),
            },
        ],
    },
    Vector {
        name: "an unlimited day window is neither counted nor shown",
        limits: limits(Some(5), None),
        stored: 0,
        steps: &[
            acquire(0, allowed(5, 4, 61)),
            Step::Plan(limits(Some(5), Some(1))),
            Step::Peek {
                at: 0,
                expect: allowed(1, 1, 0),
            },
        ],
    },
    Vector {
        name: "a zero limit refuses everything, with retry-after 1",
        limits: limits(Some(0), Some(5)),
        stored: 0,
        steps: &[
            acquire(0, refused(0, 0, 1, Minute)),
            Step::Peek {
                at: 0,
                expect: refused(0, 0, 1, Minute),
            },
        ],
    },
    Vector {
        name: "under a lowered limit, retry-after waits until the count is below it",
        limits: limits(Some(10), None),
        stored: 0,
        steps: &[
            Step::Fill { at: 0, times: 4 },
            Step::Fill {
                at: 10_000,
                times: 4,
            },
            Step::Plan(limits(Some(5), None)),
            acquire(20_000, refused(5, 41, 41, Minute)),
            Step::Plan(limits(Some(3), None)),
            acquire(20_000, refused(3, 41, 51, Minute)),
        ],
    },
    Vector {
        name: "retry-after walks as many buckets as it takes",
        limits: limits(None, Some(100)),
        stored: 0,
        steps: &[
            // One request a minute for 70 minutes: 70 day buckets.
            Step::Spread {
                at: 0,
                every: 60_000,
                times: 70,
            },
            Step::Plan(limits(None, Some(1))),
            // Below one only once the last of them leaves.
            acquire(4_200_000, refused(1, 82_260, 86_400, Day)),
        ],
    },
    Vector {
        name: "the month counts on from what storage holds, then refuses until the month ends",
        limits: monthly(None, None, 5),
        stored: 2,
        steps: &[
            Step::Peek {
                at: 0,
                expect: allowed(5, 3, 388_800),
            },
            acquire(0, allowed(5, 2, 388_800)),
            Step::Fill {
                at: 1_000,
                times: 2,
            },
            Step::Acquire {
                at: 2_000,
                times: 3,
                expect: refused(5, 388_798, 388_798, Month),
            },
            acquire(388_799_499, refused(5, 1, 1, Month)),
            // December: nothing stored, nothing counted yet; it ends 31 days later.
            acquire(388_799_500, allowed(5, 4, 2_678_400)),
        ],
    },
    Vector {
        name: "months end on the calendar in UTC, across a year and a leap day",
        limits: monthly(None, None, 1),
        stored: 0,
        steps: &[
            // 2027-12-31 23:59:59 UTC.
            acquire(34_603_198_500, allowed(1, 0, 1)),
            acquire(34_603_199_000, refused(1, 1, 1, Month)),
            // 2028-01-01 00:00 UTC.
            acquire(34_603_199_500, allowed(1, 0, 2_678_400)),
            // 2028-02-29 12:00 UTC: March starts 12 hours later.
            acquire(39_743_999_500, allowed(1, 0, 43_200)),
            acquire(39_743_999_501, refused(1, 43_200, 43_200, Month)),
            // 2028-03-01 00:00 UTC.
            acquire(39_787_199_500, allowed(1, 0, 2_678_400)),
        ],
    },
    Vector {
        name: "minute, day and month: the tighter is shown, the full one refuses",
        limits: monthly(Some(3), Some(10), 4),
        stored: 0,
        steps: &[
            acquire(0, allowed(3, 2, 61)),
            acquire(0, allowed(3, 1, 61)),
            acquire(0, allowed(3, 0, 61)),
            acquire(0, refused(3, 61, 61, Minute)),
            // The minute has rolled; the month's fourth request leaves it nothing.
            acquire(61_000, allowed(4, 0, 388_739)),
            acquire(61_000, refused(4, 388_739, 388_739, Month)),
            Step::Peek {
                at: 62_000,
                expect: refused(4, 388_738, 388_738, Month),
            },
        ],
    },
    Vector {
        name: "a month without a quota is neither read nor counted until it has one",
        limits: limits(Some(10), None),
        stored: 7,
        steps: &[
            Step::Fill { at: 0, times: 2 },
            Step::Plan(monthly(Some(10), None, 8)),
            Step::Peek {
                at: 0,
                expect: allowed(8, 1, 388_800),
            },
            acquire(0, allowed(8, 0, 388_800)),
            acquire(0, refused(8, 388_800, 388_800, Month)),
            // Raised, it lets requests through again from the same count.
            Step::Plan(monthly(Some(10), None, 9)),
            acquire(0, allowed(9, 0, 388_800)),
        ],
    },
    Vector {
        name: "a stored count over a lowered quota refuses at once",
        limits: monthly(Some(10), Some(100), 5),
        stored: 9,
        steps: &[
            acquire(0, refused(5, 388_800, 388_800, Month)),
            Step::Peek {
                at: 0,
                expect: refused(5, 388_800, 388_800, Month),
            },
        ],
    },
    Vector {
        name: "an empty month shows no reset until it counts a request",
        limits: monthly(None, None, 3),
        stored: 0,
        steps: &[
            Step::Peek {
                at: 0,
                expect: allowed(3, 3, 0),
            },
            acquire(0, allowed(3, 2, 388_800)),
        ],
    },
];

/// Stored month counts for the vectors: `stored` of T0's month per account, nothing
/// for other months; it counts its reads, which must be at most one per account and
/// month.
#[derive(Default)]
pub(crate) struct StoredCounts {
    counts: Mutex<HashMap<(AccountId, i32, u8), u64>>,
    reads: Mutex<HashMap<(AccountId, i32, u8), u32>>,
}

impl StoredCounts {
    /// `account`'s stored count of T0's month.
    pub(crate) fn set(&self, account: &AccountId, stored: u64) {
        self.set_at(account, T0, stored);
    }

    /// `account`'s stored count of `t`'s month.
    pub(crate) fn set_at(&self, account: &AccountId, t: OffsetDateTime, stored: u64) {
        self.counts
            .lock()
            .unwrap()
            .insert((account.clone(), t.year(), u8::from(t.month())), stored);
    }

    /// The most reads of one account's month.
    pub(crate) fn most_reads(&self) -> u32 {
        self.reads
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

impl UsageSource for StoredCounts {
    fn requests_in_month<'a>(
        &'a self,
        account: &'a AccountId,
        year: i32,
        month: u8,
    ) -> UsageFuture<'a> {
        let month = (account.clone(), year, month);
        let stored = self.counts.lock().unwrap().get(&month).copied();
        *self.reads.lock().unwrap().entry(month).or_insert(0) += 1;
        Box::pin(async move { Ok(stored.unwrap_or(0)) })
    }
}

fn account() -> AccountId {
    AccountId::from_ulid(ulid::Ulid::generate())
}

/// Runs `vector` for a fresh account. `answered_itself` tells, after each request,
/// whether the limiter under test made the decision (the Redis limiter, not its
/// fallback). `Err` names the first request that got another decision than the table's.
async fn run(
    limiter: &dyn RateLimiter,
    stored: &StoredCounts,
    vector: &Vector,
    answered_itself: &dyn Fn() -> bool,
) -> Result<(), String> {
    let account = account();
    stored.set(&account, vector.stored);
    let mut limits = vector.limits;
    for (step_no, step) in vector.steps.iter().enumerate() {
        let requests: Vec<(i64, bool, Option<Option<RateDecision>>)> = match *step {
            Step::Plan(new) => {
                limits = new;
                continue;
            }
            Step::Acquire { at, times, expect } => {
                (0..times).map(|_| (at, true, Some(expect))).collect()
            }
            Step::Fill { at, times } => (0..times).map(|_| (at, true, None)).collect(),
            Step::Spread { at, every, times } => (0..i64::from(times))
                .map(|i| (at + i * every, true, None))
                .collect(),
            Step::Peek { at, expect } => vec![(at, false, Some(expect))],
        };
        for (request_no, (at, consume, expect)) in requests.into_iter().enumerate() {
            let now = T0 + time::Duration::milliseconds(at);
            let got = if consume {
                limiter.acquire(&account, limits, now).await
            } else {
                limiter.peek(&account, limits, now).await
            };
            let place = format!(
                "{:?}, step {step_no}, request {request_no} at {at} ms, {limits:?}",
                vector.name
            );
            if !answered_itself() {
                return Err(format!("{place}: not answered by the limiter under test"));
            }
            let ok = match expect {
                Some(expect) => got == expect,
                None => got.is_some_and(|d| d.allowed),
            };
            if !ok {
                let wanted = expect.map_or_else(|| "allowed".to_owned(), |e| format!("{e:?}"));
                return Err(format!("{place}: got {got:?}, the table says {wanted}"));
            }
            if stored.most_reads() > 1 {
                return Err(format!("{place}: a month's stored count was read twice"));
            }
        }
    }
    Ok(())
}

/// What no row of the table can say: with a request every 100 ms for three minutes
/// against a limit of five a minute, no 60-second span holds more than five successes,
/// and the window still rolls. The tests of both limiters call it.
pub(crate) async fn no_sixty_second_span_holds_more_than_the_limit(limiter: &dyn RateLimiter) {
    let a = account();
    let limits = Limits::new(Some(5), None);
    let mut successes = Vec::new();
    for step in 0..1800 {
        let t = T0 + time::Duration::milliseconds(step * 100);
        if limiter.acquire(&a, limits, t).await.unwrap().allowed {
            successes.push(t);
        }
    }
    for (i, start) in successes.iter().enumerate() {
        let in_span = successes[i..]
            .iter()
            .take_while(|t| **t < *start + time::Duration::seconds(60))
            .count();
        assert!(in_span <= 5, "{in_span} successes in the 60 s from {start}");
    }
    assert!(
        successes.len() >= 10,
        "the window must roll: {}",
        successes.len()
    );
}

#[tokio::test]
async fn the_local_limiter_answers_every_vector() {
    for vector in VECTORS {
        let stored = Arc::new(StoredCounts::default());
        let limiter = LocalRateLimiter::with_usage(stored.clone());
        if let Err(mismatch) = run(&limiter, &stored, vector, &|| true).await {
            panic!("{mismatch}");
        }
    }
}

#[tokio::test]
async fn the_lua_script_answers_every_vector() {
    let Some(fx) = Fixture::new("the_lua_script_answers_every_vector") else {
        return;
    };
    let stored = Arc::new(StoredCounts::default());
    let limiter = fx
        .limiter_on_caller_clock()
        .await
        .with_usage(stored.clone());
    for vector in VECTORS {
        if let Err(mismatch) = run(&limiter, &stored, vector, &|| limiter.is_redis_up()).await {
            panic!("{mismatch}");
        }
    }
}
