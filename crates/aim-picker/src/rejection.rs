//! Every way a gateway refuses a request, and the HTTP answer each gets.
//!
//! As in the Gateway API Inference Extension's flow control: a full queue
//! is the client's signal to slow down (429, with Retry-After); a request
//! that waited out its timeout, or arrived while the gateway stops, is the
//! service's failure (503).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// The queue holds `capacity` requests already.
    QueueFull {
        capacity: usize,
        retry_after: Duration,
    },
    /// This client holds its share of the queue already.
    FlowFull {
        flow: String,
        limit: usize,
        retry_after: Duration,
    },
    /// Held for `waited` without an endpoint taking it. `endpoints` is how
    /// many endpoints could have (0: none was ready at all).
    TimedOut { waited: Duration, endpoints: usize },
    /// The gateway is shutting down.
    ShuttingDown,
}

impl Rejection {
    /// Every reason, as [`Rejection::reason`] names them (for metrics that
    /// start every series at zero).
    pub const REASONS: [&'static str; 4] =
        ["queue_full", "flow_full", "queue_timeout", "shutting_down"];

    pub fn status(&self) -> u16 {
        match self {
            Rejection::QueueFull { .. } | Rejection::FlowFull { .. } => 429,
            Rejection::TimedOut { .. } | Rejection::ShuttingDown => 503,
        }
    }

    /// A short, stable name: a metric label and the error body's `code`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::QueueFull { .. } => Self::REASONS[0],
            Rejection::FlowFull { .. } => Self::REASONS[1],
            Rejection::TimedOut { .. } => Self::REASONS[2],
            Rejection::ShuttingDown => Self::REASONS[3],
        }
    }

    /// When the client may retry (the value of a Retry-After header).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::QueueFull { retry_after, .. } | Rejection::FlowFull { retry_after, .. } => {
                Some(*retry_after)
            }
            Rejection::TimedOut { .. } | Rejection::ShuttingDown => None,
        }
    }

    /// What happened and what to do, for the error body.
    pub fn message(&self) -> String {
        match self {
            Rejection::QueueFull {
                capacity,
                retry_after,
            } => format!(
                "every endpoint is saturated and the gateway queue is full ({capacity} requests held); retry after {} s",
                retry_after.as_secs()
            ),
            Rejection::FlowFull {
                flow,
                limit,
                retry_after,
            } => format!(
                "client `{flow}` already has {limit} requests held in the gateway queue, its limit; retry after {} s",
                retry_after.as_secs()
            ),
            Rejection::TimedOut {
                waited,
                endpoints: 0,
            } => format!(
                "no endpoint was ready while the request waited {:.1} s in the gateway queue",
                waited.as_secs_f64()
            ),
            Rejection::TimedOut {
                waited,
                endpoints: 1,
            } => format!(
                "the endpoint stayed saturated while the request waited {:.1} s in the gateway queue",
                waited.as_secs_f64()
            ),
            Rejection::TimedOut { waited, endpoints } => format!(
                "all {endpoints} endpoints stayed saturated while the request waited {:.1} s in the gateway queue",
                waited.as_secs_f64()
            ),
            Rejection::ShuttingDown => {
                "the gateway is shutting down; retry on another instance".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_status_and_name() {
        let full = Rejection::QueueFull {
            capacity: 8,
            retry_after: Duration::from_secs(3),
        };
        assert_eq!((full.status(), full.reason()), (429, "queue_full"));
        assert_eq!(full.retry_after(), Some(Duration::from_secs(3)));
        assert!(
            full.message().contains("8 requests held"),
            "{}",
            full.message()
        );
        let flow = Rejection::FlowFull {
            flow: "team-a".into(),
            limit: 2,
            retry_after: Duration::from_secs(1),
        };
        assert_eq!((flow.status(), flow.reason()), (429, "flow_full"));
        assert!(flow.message().contains("`team-a`"));
        let late = Rejection::TimedOut {
            waited: Duration::from_millis(2500),
            endpoints: 3,
        };
        assert_eq!(
            (late.status(), late.reason(), late.retry_after()),
            (503, "queue_timeout", None)
        );
        assert!(
            late.message().contains("all 3 endpoints stayed saturated"),
            "{}",
            late.message()
        );
        assert!(late.message().contains("2.5 s"));
        let none = Rejection::TimedOut {
            waited: Duration::from_secs(1),
            endpoints: 0,
        };
        assert!(none.message().starts_with("no endpoint was ready"));
        let one = Rejection::TimedOut {
            waited: Duration::from_secs(1),
            endpoints: 1,
        };
        assert!(one.message().starts_with("the endpoint stayed saturated"));
        assert_eq!(Rejection::ShuttingDown.status(), 503);
        let names: Vec<_> = [full, flow, late, Rejection::ShuttingDown]
            .iter()
            .map(Rejection::reason)
            .collect();
        assert_eq!(names, Rejection::REASONS);
    }
}
