//! `cart-union`: a shopping cart that merges concurrent edits from several regions, written
//! only against the public `conflict::Resolver` trait, as an application writes its own
//! resolver. Shared by the `shopping_cart` example (which registers it) and
//! `tests/custom_resolver.rs` (which checks its laws and runs it across two regions).
//!
//! **Value**: UTF-8 text, one item line per SKU, `sku:qty`, e.g. `apple:2\nbread:1\n`.
//! A SKU is 1–64 characters from `[A-Za-z0-9._-]`; a quantity is a decimal from 1 to
//! 4294967295. Clients may send the lines in any order with or without a final newline; the
//! merged value readers see is canonical: SKUs sorted, each line ending in `\n`. An empty
//! value is an empty cart.
//!
//! **Merge**: the union of the items, with the largest quantity seen for each SKU. That is a
//! pointwise maximum over maps, so it is a join-semilattice (commutative, associative,
//! idempotent), and [`CartUnion`] says so; the law checker verifies it.
//!
//! **What that means for shoppers**: items added in two regions at once are both kept, and a
//! quantity raised in one region while another region edits the cart keeps the raise. To
//! lower a quantity or remove an item, read the cart and write the new cart back with the
//! context read: the write supersedes exactly the versions it saw. A version written
//! concurrently elsewhere survives beside it, and if that version still lists the item, the
//! merge brings it back: add wins over a concurrent remove (the shopping-cart behaviour of
//! Amazon's Dynamo paper). Deleting the key empties the cart for everything the delete saw;
//! tombstones contribute nothing to the merge, and a cart with only tombstones reads as absent.

// The example and the test each use a different part of the helpers.
#![allow(
    dead_code,
    reason = "shared by the example and its test; each uses a subset"
)]

use std::collections::BTreeMap;

use conflict::{InvalidValue, Resolved, Resolver, Sibling};

/// Longest SKU accepted.
pub(crate) const MAX_SKU_BYTES: usize = 64;
/// Most items a client may write in one cart. Checked on writes only: a merged cart may hold
/// more (at most `max_siblings` times this), and must still read back.
pub(crate) const MAX_ITEMS: usize = 1000;

/// A cart's items: quantity per SKU, ascending by SKU.
pub(crate) type Items = BTreeMap<String, u32>;

/// The `cart-union` resolver. Register it with `LeaderBuilder::register` and name it in
/// `regions.toml`: `[tables] carts = "cart-union"`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CartUnion;

impl CartUnion {
    /// The items of a cart value, or why the bytes are not a cart.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Items, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "a cart is UTF-8 text".to_owned())?;
        let mut items = Items::new();
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            let Some((sku, qty)) = line.split_once(':') else {
                return Err(format!("line {n} `{line}` is not `sku:qty`"));
            };
            let sku_ok = !sku.is_empty()
                && sku.len() <= MAX_SKU_BYTES
                && sku
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !sku_ok {
                return Err(format!(
                    "line {n}: SKU `{sku}` must be 1-{MAX_SKU_BYTES} characters from A-Z a-z 0-9 . _ -"
                ));
            }
            // Digits only: `u32::from_str` would also take `+3`, a second spelling of 3.
            let qty = match qty.parse::<u32>() {
                Ok(q) if q > 0 && qty.bytes().all(|b| b.is_ascii_digit()) => q,
                _ => {
                    return Err(format!(
                        "line {n}: quantity `{qty}` must be a whole number from 1 to {}",
                        u32::MAX
                    ));
                }
            };
            if items.insert(sku.to_owned(), qty).is_some() {
                return Err(format!("line {n}: SKU `{sku}` appears twice"));
            }
        }
        Ok(items)
    }

    /// The canonical value of a cart: one `sku:qty\n` line per item, ascending by SKU, so equal
    /// carts have equal bytes in every region.
    pub(crate) fn encode(items: &Items) -> Vec<u8> {
        items
            .iter()
            .map(|(sku, qty)| format!("{sku}:{qty}\n"))
            .collect::<String>()
            .into_bytes()
    }

    /// The items a reader sees: empty when the cart is absent.
    pub(crate) fn items(resolved: &Resolved) -> Items {
        match resolved {
            Resolved::Value(bytes) => CartUnion::parse(bytes).unwrap_or_default(),
            Resolved::Absent | Resolved::Siblings(_) => Items::new(),
        }
    }

    /// The cart read as `current` (`None` if absent) with `sku` set to `qty` (removed for 0).
    /// Write the result back with the context read.
    pub(crate) fn set(current: Option<&[u8]>, sku: &str, qty: u32) -> Vec<u8> {
        let mut items = current
            .and_then(|c| CartUnion::parse(c).ok())
            .unwrap_or_default();
        if qty == 0 {
            items.remove(sku);
        } else {
            items.insert(sku.to_owned(), qty);
        }
        CartUnion::encode(&items)
    }
}

impl Resolver for CartUnion {
    fn name(&self) -> &str {
        "cart-union"
    }

    /// Bump when the merge would answer differently for some input: peers refuse to
    /// replicate a table whose resolver versions differ.
    fn version(&self) -> u32 {
        1
    }

    fn is_semilattice(&self) -> bool {
        true
    }

    fn resolve(&self, siblings: &[Sibling]) -> Resolved {
        let mut merged = Items::new();
        let mut any_live = false;
        for bytes in siblings.iter().filter_map(|s| s.value.as_bytes()) {
            any_live = true;
            // A value that is not a cart (refused at its origin by check_value) merges as an
            // empty cart: replicated writes are never refused, so resolve must stay total.
            for (sku, qty) in CartUnion::parse(bytes).unwrap_or_default() {
                let entry = merged.entry(sku).or_insert(0);
                *entry = (*entry).max(qty);
            }
        }
        if any_live {
            Resolved::Value(CartUnion::encode(&merged))
        } else {
            Resolved::Absent
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), InvalidValue> {
        let items = CartUnion::parse(value).map_err(|e| InvalidValue {
            reason: format!("{e}; a cart is lines of `sku:qty`, e.g. `apple:2`"),
        })?;
        if items.len() > MAX_ITEMS {
            return Err(InvalidValue {
                reason: format!(
                    "the cart has {} items and a cart holds at most {MAX_ITEMS}",
                    items.len()
                ),
            });
        }
        Ok(())
    }
}
