use crate::{Policy, PolicyError, PolicyInput};

/// Reports the queried value unchanged: the behaviour of a plain
/// otel-add-on trigger, where the HPA divides the value by the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

impl Policy for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }

    fn parameters(&self) -> &'static [&'static str] {
        &[]
    }

    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError> {
        input
            .values
            .first()
            .copied()
            .ok_or(PolicyError::NotEnoughValues {
                policy: "passthrough",
                needed: 1,
                got: 0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn returns_first_value_unchanged() {
        let metadata = BTreeMap::new();
        for value in [0.0, 0.25, 7.5, -3.0] {
            let values = [value, 100.0];
            let input = PolicyInput::new(&values, &metadata);
            assert_eq!(Passthrough.evaluate(&input).unwrap(), value);
        }
    }

    #[test]
    fn no_value_is_an_error() {
        let metadata = BTreeMap::new();
        let input = PolicyInput::new(&[], &metadata);
        assert!(matches!(
            Passthrough.evaluate(&input),
            Err(PolicyError::NotEnoughValues { got: 0, .. })
        ));
    }
}
