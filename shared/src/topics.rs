//! Kafka topic names: `{prefix}movements`, `{prefix}store-commands`, `{prefix}alerts`.

pub const DEFAULT_PREFIX: &str = "bazaar.";
pub const DEFAULT_PARTITIONS: i32 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub movements: String,
    pub store_commands: String,
    pub alerts: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            movements: format!("{prefix}movements"),
            store_commands: format!("{prefix}store-commands"),
            alerts: format!("{prefix}alerts"),
        }
    }

    pub fn all(&self) -> [&str; 3] {
        [&self.movements, &self.store_commands, &self.alerts]
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_design() {
        let t = Topics::default();
        assert_eq!(
            t.all(),
            ["bazaar.movements", "bazaar.store-commands", "bazaar.alerts"]
        );
        assert_eq!(Topics::with_prefix("t1.").movements, "t1.movements");
    }
}
