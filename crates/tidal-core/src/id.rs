use std::fmt;
use std::str::FromStr;

use crate::CoreError;

/// The id of an item, user or creator. Stored big-endian so that byte order equals
/// numeric order in every key-value store and range partitioning by id is natural.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntityId(pub u64);

impl EntityId {
    /// Big-endian key bytes.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Inverse of [`EntityId::to_key`]; `None` when `bytes` is not 8 bytes long.
    pub fn from_key(bytes: &[u8]) -> Option<EntityId> {
        let arr: [u8; 8] = bytes.try_into().ok()?;
        Some(EntityId(u64::from_be_bytes(arr)))
    }

    /// Converts a SQL BIGINT. Ids are non-negative; a negative value is rejected.
    pub fn from_i64(v: i64) -> Option<EntityId> {
        u64::try_from(v).ok().map(EntityId)
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The three kinds of entity tidalDB knows. Each has exactly one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityKind {
    Item,
    User,
    Creator,
}

impl EntityKind {
    pub const ALL: [EntityKind; 3] = [EntityKind::Item, EntityKind::User, EntityKind::Creator];

    /// Singular name, as in `WITH (kind = 'item')`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Item => "item",
            EntityKind::User => "user",
            EntityKind::Creator => "creator",
        }
    }

    /// The table name, as in `ON items`.
    pub fn table_name(self) -> &'static str {
        match self {
            EntityKind::Item => "items",
            EntityKind::User => "users",
            EntityKind::Creator => "creators",
        }
    }

    /// Stable one-byte tag used in encodings.
    pub fn tag(self) -> u8 {
        match self {
            EntityKind::Item => 1,
            EntityKind::User => 2,
            EntityKind::Creator => 3,
        }
    }

    pub fn from_tag(tag: u8) -> Option<EntityKind> {
        match tag {
            1 => Some(EntityKind::Item),
            2 => Some(EntityKind::User),
            3 => Some(EntityKind::Creator),
            _ => None,
        }
    }
}

impl FromStr for EntityKind {
    type Err = CoreError;

    /// Accepts the singular or the table name, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "item" | "items" => Ok(EntityKind::Item),
            "user" | "users" => Ok(EntityKind::User),
            "creator" | "creators" => Ok(EntityKind::Creator),
            _ => Err(CoreError::UnknownKind {
                text: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_numeric_order() {
        let ids = [0u64, 1, 255, 256, 65_535, u64::MAX / 2, u64::MAX];
        for w in ids.windows(2) {
            assert!(EntityId(w[0]).to_key() < EntityId(w[1]).to_key());
        }
        assert_eq!(
            EntityId::from_key(&EntityId(42).to_key()),
            Some(EntityId(42))
        );
        assert_eq!(EntityId::from_key(&[1, 2, 3]), None);
    }

    #[test]
    fn kind_parse() {
        assert_eq!("Items".parse::<EntityKind>().unwrap(), EntityKind::Item);
        assert_eq!(
            "creator".parse::<EntityKind>().unwrap(),
            EntityKind::Creator
        );
        assert!("posts".parse::<EntityKind>().is_err());
        for k in EntityKind::ALL {
            assert_eq!(EntityKind::from_tag(k.tag()), Some(k));
        }
    }
}
