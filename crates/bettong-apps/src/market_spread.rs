//! Market Spread: Wallaroo's benchmark application — message formats, per-symbol state and logic.
//!
//! Two sources feed one keyed state computation: "Orders" (fixish order messages) and "Nbbo"
//! (fixish national-best-bid-and-offer updates), both keyed by the 4-byte symbol. Each symbol keeps
//! its last bid and offer and whether its spread is too wide to trade; an order on such a symbol
//! produces an [`OrderResult`], every other input produces nothing. [`application`] is the whole
//! app, as `bettong market-spread` runs it.
//!
//! Every byte layout here is Wallaroo's (`lib/wallaroo_labs/new_fix/fixish_messages.pony` and the
//! Pony market-spread encoder), so Wallaroo's data files, Giles senders and receivers work
//! unchanged. All integers and floats are big-endian; every record travels framed by a
//! `[u32 BE payload_len]` header.
//!
//! The inputs are checked in place: [`Order`] and [`Nbbo`] are plain byte layouts (alignment 1)
//! that `bytemuck` casts straight over the payload, and their accessors decode a field only when
//! it is read. A source's decoder reads the fields the state needs out of the payload into a
//! [`MarketMessage`] (32 bytes, in native byte order): a small `Copy` value, because the engine
//! moves messages between cores by value.
//!
//! ```
//! use bettong_apps::market_spread::{check, decode, pad_symbol, Nbbo, Order, SymbolData};
//!
//! let time = *b"20160902-15:47:52.000";
//! let mut wire = Vec::new();
//! Nbbo::new(pad_symbol("GE"), time, 30.00, 30.01).encode_framed(&mut wire);
//! Order::new(1, 42, *b"AB12cd", pad_symbol("GE"), 100.0, 30.0, time).encode_framed(&mut wire);
//!
//! let mut state = SymbolData::default();
//! // The NBBO's spread is narrow, so the order that follows is accepted and produces nothing.
//! assert!(check(decode(&wire[4..46])?, &mut state, 0).is_none());
//! assert!(check(decode(&wire[50..])?, &mut state, 0).is_none());
//! # Ok::<(), bettong_apps::market_spread::FixishError>(())
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytemuck::{Pod, Zeroable};

use bettong::codec::DecodeError;
use bettong::{Application, Pipeline, TcpSink, TcpSource};

use crate::pieces::whole;

/// Fix type byte of an order message.
pub const ORDER_TYPE: u8 = 1;
/// Fix type byte of an NBBO message.
pub const NBBO_TYPE: u8 = 2;
/// Payload length of an order message (57 bytes on the wire with its length header).
pub const ORDER_PAYLOAD_LEN: usize = 53;
/// Payload length of an NBBO message (46 bytes on the wire with its length header).
pub const NBBO_PAYLOAD_LEN: usize = 42;
/// Payload length of an encoded [`OrderResult`].
pub const ORDER_RESULT_PAYLOAD_LEN: usize = 55;
/// Length of one framed [`OrderResult`] on the wire: the `u32` header plus the payload.
pub const ORDER_RESULT_FRAME_LEN: usize = 4 + ORDER_RESULT_PAYLOAD_LEN;
/// Length of the ASCII transact time `YYYYMMDD-HH:MM:SS.000`.
pub const TRANSACT_TIME_LEN: usize = 21;
/// Spreads at or above this (absolute, or relative to the mid price) stop trading on a symbol.
pub const MAX_SPREAD: f64 = 0.05;

/// Why a payload is not a valid fixish message or order result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FixishError {
    /// The payload has no bytes at all, so not even a type byte.
    Empty,
    /// The type byte is neither 1 (order) nor 2 (NBBO). Wallaroo decodes these to
    /// "OtherFixMessage" and its source rejects them; so do we.
    UnknownType(u8),
    /// The payload length does not match the fixed layout of its kind.
    WrongLength {
        /// Which kind of message the payload claimed to be.
        kind: &'static str,
        /// The length that kind always has.
        expected: usize,
        /// The length that arrived.
        actual: usize,
    },
    /// A symbol longer than the 4 bytes the wire format has room for.
    SymbolTooLong(String),
}

impl fmt::Display for FixishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FixishError::Empty => f.write_str("empty fixish payload: no message type byte"),
            FixishError::UnknownType(t) => write!(
                f,
                "unknown fixish message type {t} (expected {ORDER_TYPE} = order or {NBBO_TYPE} = NBBO)"
            ),
            FixishError::WrongLength {
                kind,
                expected,
                actual,
            } => write!(
                f,
                "{kind} payload must be {expected} bytes, got {actual}"
            ),
            FixishError::SymbolTooLong(s) => {
                write!(f, "symbol `{s}` is longer than 4 bytes")
            }
        }
    }
}

impl std::error::Error for FixishError {}

/// Right-aligns a symbol in the 4 bytes the wire format has, padding with leading spaces
/// (`"GE"` becomes `"  GE"`), as Wallaroo's data files do.
///
/// A symbol longer than 4 bytes keeps only its first 4 bytes (`"GOOGL"` becomes `"GOOG"`); use
/// [`try_pad_symbol`] where that truncation would silently merge two symbols into one key.
///
/// ```
/// use bettong_apps::market_spread::pad_symbol;
/// assert_eq!(&pad_symbol("GE"), b"  GE");
/// assert_eq!(&pad_symbol("GOOGL"), b"GOOG");
/// ```
pub fn pad_symbol(symbol: &str) -> [u8; 4] {
    let bytes = symbol.as_bytes();
    let bytes = &bytes[..bytes.len().min(4)];
    let mut out = [b' '; 4];
    out[4 - bytes.len()..].copy_from_slice(bytes);
    out
}

/// Like [`pad_symbol`], but a symbol longer than 4 bytes is an error instead of being cut.
///
/// ```
/// use bettong_apps::market_spread::try_pad_symbol;
/// assert_eq!(try_pad_symbol("F").ok(), Some(*b"   F"));
/// assert!(try_pad_symbol("GOOGL").is_err());
/// ```
pub fn try_pad_symbol(symbol: &str) -> Result<[u8; 4], FixishError> {
    if symbol.len() > 4 {
        return Err(FixishError::SymbolTooLong(symbol.to_owned()));
    }
    Ok(pad_symbol(symbol))
}

/// Whether a bid/offer pair makes a symbol untradeable: Wallaroo's rule
/// `spread >= 0.05 || spread / mid >= 0.05`.
///
/// With both prices 0 the relative spread is NaN, which compares false, so the pair is accepted,
/// exactly as in Wallaroo.
///
/// ```
/// use bettong_apps::market_spread::is_rejected_spread;
/// assert!(is_rejected_spread(10.00, 10.05)); // absolute spread 0.05
/// assert!(is_rejected_spread(0.50, 0.53)); // 0.03 wide, but 5.8% of the mid price
/// assert!(!is_rejected_spread(10.00, 10.03));
/// ```
pub fn is_rejected_spread(bid: f64, offer: f64) -> bool {
    let spread = offer - bid;
    let mid = (bid + offer) / 2.0;
    spread >= MAX_SPREAD || spread / mid >= MAX_SPREAD
}

/// Nanoseconds since the Unix epoch by the wall clock: the timestamp Wallaroo's Pony encoder
/// puts in every [`OrderResult`]. A clock set before 1970 reads as 0 rather than failing.
///
/// ```
/// assert!(bettong_apps::market_spread::wall_clock_ns() > 1_500_000_000_000_000_000);
/// ```
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn check_len(kind: &'static str, payload: &[u8], expected: usize) -> Result<(), FixishError> {
    if payload.len() == expected {
        Ok(())
    } else {
        Err(FixishError::WrongLength {
            kind,
            expected,
            actual: payload.len(),
        })
    }
}

/// A fixish order, in its 53-byte wire layout; the accessors decode its big-endian fields.
///
/// Layout: `0:u8 type=1 | 1:u8 side | 2:u32 account | 6:[u8;6] order id | 12:[u8;4] symbol |
/// 16:f64 qty | 24:f64 price | 32:[u8;21] transact time`.
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, Order};
/// let order = Order::new(2, 7, *b"abc123", pad_symbol("F"), 650.0, 12.5, *b"20160902-15:47:52.000");
/// let view = Order::from_payload(bytemuck::bytes_of(&order))?;
/// assert_eq!((view.side(), view.account(), view.symbol()), (2, 7, b"   F"));
/// assert_eq!((view.qty(), view.price()), (650.0, 12.5));
/// # Ok::<(), bettong_apps::market_spread::FixishError>(())
/// ```
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Order {
    fix_type: u8,
    side: u8,
    account: [u8; 4],
    order_id: [u8; 6],
    symbol: [u8; 4],
    qty: [u8; 8],
    price: [u8; 8],
    transact_time: [u8; TRANSACT_TIME_LEN],
}

/// A fixish NBBO update, in its 42-byte wire layout; the accessors decode its big-endian fields.
///
/// Layout: `0:u8 type=2 | 1:[u8;4] symbol | 5:[u8;21] transact time | 26:f64 bid | 34:f64 offer`.
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, Nbbo};
/// let nbbo = Nbbo::new(pad_symbol("INSM"), *b"20160902-15:47:52.000", 19.6505, 19.7136);
/// let view = Nbbo::from_payload(bytemuck::bytes_of(&nbbo))?;
/// assert_eq!((view.symbol(), view.bid(), view.offer()), (b"INSM", 19.6505, 19.7136));
/// # Ok::<(), bettong_apps::market_spread::FixishError>(())
/// ```
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Nbbo {
    fix_type: u8,
    symbol: [u8; 4],
    transact_time: [u8; TRANSACT_TIME_LEN],
    bid: [u8; 8],
    offer: [u8; 8],
}

// The wire format is the contract: a field added or resized by mistake must not compile.
const _: () = assert!(std::mem::size_of::<Order>() == ORDER_PAYLOAD_LEN);
const _: () = assert!(std::mem::align_of::<Order>() == 1);
const _: () = assert!(std::mem::size_of::<Nbbo>() == NBBO_PAYLOAD_LEN);
const _: () = assert!(std::mem::align_of::<Nbbo>() == 1);

impl Order {
    /// Builds an order from its fields (for generators and tests; the engine only decodes).
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Order};
    /// let o = Order::new(1, 300, *b"Zz9Yy8", pad_symbol("GE"), 10.0, 25.5, *b"20160902-09:30:00.000");
    /// assert_eq!(o.order_id(), b"Zz9Yy8");
    /// ```
    pub fn new(
        side: u8,
        account: u32,
        order_id: [u8; 6],
        symbol: [u8; 4],
        qty: f64,
        price: f64,
        transact_time: [u8; TRANSACT_TIME_LEN],
    ) -> Order {
        Order {
            fix_type: ORDER_TYPE,
            side,
            account: account.to_be_bytes(),
            order_id,
            symbol,
            qty: qty.to_be_bytes(),
            price: price.to_be_bytes(),
            transact_time,
        }
    }

    /// Views a 53-byte payload whose type byte is 1 as an order, without copying it.
    ///
    /// ```
    /// use bettong_apps::market_spread::Order;
    /// assert!(Order::from_payload(&[1; 52]).is_err());
    /// ```
    pub fn from_payload(payload: &[u8]) -> Result<&Order, FixishError> {
        match payload.first() {
            None => return Err(FixishError::Empty),
            Some(&ORDER_TYPE) => {}
            Some(&other) => return Err(FixishError::UnknownType(other)),
        }
        check_len("order", payload, ORDER_PAYLOAD_LEN)?;
        bytemuck::try_from_bytes(payload).map_err(|_| FixishError::WrongLength {
            kind: "order",
            expected: ORDER_PAYLOAD_LEN,
            actual: payload.len(),
        })
    }

    /// The 53 payload bytes, exactly as on the wire (without the length header).
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::bytes_of(self)
    }

    /// Appends the framed order (`[u32 BE 53]` + payload, 57 bytes) to `buf`.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Order};
    /// let mut buf = Vec::new();
    /// Order::new(1, 1, *b"000001", pad_symbol("GE"), 10.0, 1.0, [b'0'; 21]).encode_framed(&mut buf);
    /// assert_eq!(buf.len(), 57);
    /// assert_eq!(&buf[..4], &[0, 0, 0, 53]);
    /// ```
    pub fn encode_framed(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&(ORDER_PAYLOAD_LEN as u32).to_be_bytes());
        buf.extend_from_slice(self.as_bytes());
    }

    /// Side: 1 = buy, 2 = sell (as sent; not validated, Wallaroo does not look at it either).
    pub fn side(&self) -> u8 {
        self.side
    }

    /// Client account number.
    pub fn account(&self) -> u32 {
        u32::from_be_bytes(self.account)
    }

    /// Order id, 6 ASCII bytes.
    pub fn order_id(&self) -> &[u8; 6] {
        &self.order_id
    }

    /// Symbol, 4 ASCII bytes right-aligned with leading spaces; this is the key.
    pub fn symbol(&self) -> &[u8; 4] {
        &self.symbol
    }

    /// Order quantity.
    pub fn qty(&self) -> f64 {
        f64::from_be_bytes(self.qty)
    }

    /// Limit price.
    pub fn price(&self) -> f64 {
        f64::from_be_bytes(self.price)
    }

    /// Transact time, ASCII `YYYYMMDD-HH:MM:SS.000`.
    pub fn transact_time(&self) -> &[u8; TRANSACT_TIME_LEN] {
        &self.transact_time
    }

    /// The order as a [`MarketMessage`] holds it: what the decoder makes of these bytes.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Order};
    /// let order = Order::new(1, 7, *b"abc123", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
    /// assert_eq!(order.decoded().price(), order.price());
    /// ```
    pub fn decoded(&self) -> DecodedOrder {
        bytemuck::cast(MarketMessage::of_order(self).halves)
    }
}

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Order")
            .field("side", &self.side())
            .field("account", &self.account())
            .field("order_id", &self.order_id.escape_ascii().to_string())
            .field("symbol", &self.symbol.escape_ascii().to_string())
            .field("qty", &self.qty())
            .field("price", &self.price())
            .field(
                "transact_time",
                &self.transact_time.escape_ascii().to_string(),
            )
            .finish()
    }
}

impl Nbbo {
    /// Builds an NBBO update from its fields (for generators and tests).
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Nbbo};
    /// let n = Nbbo::new(pad_symbol("GE"), *b"20160902-09:30:00.000", 30.0, 30.02);
    /// assert_eq!(n.offer(), 30.02);
    /// ```
    pub fn new(
        symbol: [u8; 4],
        transact_time: [u8; TRANSACT_TIME_LEN],
        bid: f64,
        offer: f64,
    ) -> Nbbo {
        Nbbo {
            fix_type: NBBO_TYPE,
            symbol,
            transact_time,
            bid: bid.to_be_bytes(),
            offer: offer.to_be_bytes(),
        }
    }

    /// Views a 42-byte payload whose type byte is 2 as an NBBO update, without copying it.
    ///
    /// ```
    /// use bettong_apps::market_spread::Nbbo;
    /// assert!(Nbbo::from_payload(&[2; 42]).is_ok());
    /// assert!(Nbbo::from_payload(&[1; 42]).is_err());
    /// ```
    pub fn from_payload(payload: &[u8]) -> Result<&Nbbo, FixishError> {
        match payload.first() {
            None => return Err(FixishError::Empty),
            Some(&NBBO_TYPE) => {}
            Some(&other) => return Err(FixishError::UnknownType(other)),
        }
        check_len("NBBO", payload, NBBO_PAYLOAD_LEN)?;
        bytemuck::try_from_bytes(payload).map_err(|_| FixishError::WrongLength {
            kind: "NBBO",
            expected: NBBO_PAYLOAD_LEN,
            actual: payload.len(),
        })
    }

    /// The 42 payload bytes, exactly as on the wire (without the length header).
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::bytes_of(self)
    }

    /// Appends the framed update (`[u32 BE 42]` + payload, 46 bytes) to `buf`.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Nbbo};
    /// let mut buf = Vec::new();
    /// Nbbo::new(pad_symbol("GE"), [b'0'; 21], 1.0, 1.01).encode_framed(&mut buf);
    /// assert_eq!(buf.len(), 46);
    /// assert_eq!(&buf[..5], &[0, 0, 0, 42, 2]);
    /// ```
    pub fn encode_framed(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&(NBBO_PAYLOAD_LEN as u32).to_be_bytes());
        buf.extend_from_slice(self.as_bytes());
    }

    /// Symbol, 4 ASCII bytes right-aligned with leading spaces; this is the key.
    pub fn symbol(&self) -> &[u8; 4] {
        &self.symbol
    }

    /// Transact time, ASCII `YYYYMMDD-HH:MM:SS.000`.
    pub fn transact_time(&self) -> &[u8; TRANSACT_TIME_LEN] {
        &self.transact_time
    }

    /// Best bid.
    pub fn bid(&self) -> f64 {
        f64::from_be_bytes(self.bid)
    }

    /// Best offer.
    pub fn offer(&self) -> f64 {
        f64::from_be_bytes(self.offer)
    }

    /// `(bid + offer) / 2`, the price the relative spread is measured against.
    pub fn mid(&self) -> f64 {
        (self.bid() + self.offer()) / 2.0
    }

    /// The update as a [`MarketMessage`] holds it: what the decoder makes of these bytes.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Nbbo};
    /// let nbbo = Nbbo::new(pad_symbol("GE"), [b'0'; 21], 30.0, 30.01);
    /// assert_eq!(nbbo.decoded().offer(), 30.01);
    /// ```
    pub fn decoded(&self) -> DecodedNbbo {
        bytemuck::cast(MarketMessage::of_nbbo(self).halves)
    }
}

impl fmt::Debug for Nbbo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nbbo")
            .field("symbol", &self.symbol.escape_ascii().to_string())
            .field(
                "transact_time",
                &self.transact_time.escape_ascii().to_string(),
            )
            .field("bid", &self.bid())
            .field("offer", &self.offer())
            .finish()
    }
}

/// An order as the state reads it: the fields an [`OrderResult`] takes from it, decoded from
/// the wire's big-endian into native byte order, and no transact time (Market Spread never
/// reads it; VWAP's decoder parses it into the event time first).
///
/// Layout, 32 bytes: `0:u8 type=1 | 1:u8 side | 2:[u8;6] order id | 8:u32 account |
/// 12:[u8;4] symbol | 16:f64 qty | 24:f64 price`, each number in native byte order. The fields
/// are byte arrays, so the type has alignment 1 and a [`MarketMessage`] hands it out in place.
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, Order};
/// let order = Order::new(2, 7, *b"abc123", pad_symbol("F"), 650.0, 12.5, [b'0'; 21]).decoded();
/// assert_eq!((order.side(), order.account(), order.order_id()), (2, 7, b"abc123"));
/// assert_eq!((order.symbol(), order.qty(), order.price()), (b"   F", 650.0, 12.5));
/// ```
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DecodedOrder {
    fix_type: u8,
    side: u8,
    order_id: [u8; 6],
    account: [u8; 4],
    symbol: [u8; 4],
    qty: [u8; 8],
    price: [u8; 8],
}

/// An NBBO update as the state reads it: its symbol, bid and offer in native byte order, and no
/// transact time.
///
/// Layout, 32 bytes: `0:u8 type=2 | 1..12: zeros | 12:[u8;4] symbol | 16:f64 bid |
/// 24:f64 offer`: the symbol where a [`DecodedOrder`] has it, so the key is read from one place
/// whatever the message.
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, Nbbo};
/// let nbbo = Nbbo::new(pad_symbol("INSM"), [b'0'; 21], 19.6505, 19.7136).decoded();
/// assert_eq!((nbbo.symbol(), nbbo.bid(), nbbo.offer()), (b"INSM", 19.6505, 19.7136));
/// ```
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DecodedNbbo {
    fix_type: u8,
    zeros: [u8; 11],
    symbol: [u8; 4],
    bid: [u8; 8],
    offer: [u8; 8],
}

const _: () = assert!(std::mem::size_of::<DecodedOrder>() == MESSAGE_LEN);
const _: () = assert!(std::mem::size_of::<DecodedNbbo>() == MESSAGE_LEN);
const _: () = assert!(std::mem::align_of::<DecodedOrder>() == 1);
const _: () = assert!(std::mem::align_of::<DecodedNbbo>() == 1);

/// The size of a [`MarketMessage`], and of each of the two things it can be.
const MESSAGE_LEN: usize = 32;

/// Where both decoded kinds keep the symbol.
const SYMBOL_AT: usize = 12;

impl DecodedOrder {
    /// Side: 1 = buy, 2 = sell.
    #[inline]
    pub fn side(&self) -> u8 {
        self.side
    }

    /// Client account number.
    #[inline]
    pub fn account(&self) -> u32 {
        u32::from_ne_bytes(self.account)
    }

    /// Order id, 6 ASCII bytes.
    #[inline]
    pub fn order_id(&self) -> &[u8; 6] {
        &self.order_id
    }

    /// Symbol, 4 ASCII bytes right-aligned with leading spaces; this is the key.
    #[inline]
    pub fn symbol(&self) -> &[u8; 4] {
        &self.symbol
    }

    /// Order quantity.
    #[inline]
    pub fn qty(&self) -> f64 {
        f64::from_ne_bytes(self.qty)
    }

    /// Limit price.
    #[inline]
    pub fn price(&self) -> f64 {
        f64::from_ne_bytes(self.price)
    }
}

impl fmt::Debug for DecodedOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodedOrder")
            .field("side", &self.side())
            .field("account", &self.account())
            .field("order_id", &self.order_id.escape_ascii().to_string())
            .field("symbol", &self.symbol.escape_ascii().to_string())
            .field("qty", &self.qty())
            .field("price", &self.price())
            .finish()
    }
}

impl DecodedNbbo {
    /// Symbol, 4 ASCII bytes right-aligned with leading spaces; this is the key.
    #[inline]
    pub fn symbol(&self) -> &[u8; 4] {
        &self.symbol
    }

    /// Best bid.
    #[inline]
    pub fn bid(&self) -> f64 {
        f64::from_ne_bytes(self.bid)
    }

    /// Best offer.
    #[inline]
    pub fn offer(&self) -> f64 {
        f64::from_ne_bytes(self.offer)
    }
}

impl fmt::Debug for DecodedNbbo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodedNbbo")
            .field("symbol", &self.symbol.escape_ascii().to_string())
            .field("bid", &self.bid())
            .field("offer", &self.offer())
            .finish()
    }
}

/// One input of the merged Market Spread stream: what the "Orders" and "Nbbo" sources decode to,
/// a [`DecodedOrder`] or a [`DecodedNbbo`] in 32 bytes. [`view`](MarketMessage::view) tells
/// which.
///
/// Why 32 bytes and not the wire's 53 or 42: the engine moves a message by value, through a
/// batch and, when its key belongs to another shard, through a ring slot that the other core
/// reads from this one's cache. Half a cache line per message halves both. Against the 64-byte
/// message that held the wire bytes (`perf/peer`, `bettong-iter`, 24 M messages, 12 rounds
/// alternating): 2 shards 1.39× (CPU per message 22.8 -> 15.5 ns), 1 shard 1.07×, and 2 shards
/// ÷ 1 shard 1.31× where the 64-byte message read 0.95×; instructions per message on 1 shard
/// 190.1 -> 176.1 (`perf/callgrind.sh`).
///
/// The wire's type byte comes first, and the symbol sits at the same offset in both kinds, so
/// the key is read without a branch on the kind (half a mispredicted branch per message in
/// callgrind's simulation went with that branch). The decoder builds each 16-byte half in a
/// register and stores it whole: a later move of the message loads it in 16-byte pieces, and a
/// piece written by smaller stores cannot be forwarded to that load (the crate's `pieces`
/// module). A message that was an `enum` copied in overlapping pieces had 75% of the TCP
/// source's decode-and-emit samples on such loads.
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, symbol_key, MarketMessage, MarketView, Nbbo};
/// let nbbo = Nbbo::new(pad_symbol("GE"), [b'0'; 21], 1.0, 1.01);
/// let msg = MarketMessage::from(nbbo);
/// assert_eq!(symbol_key(&msg), b"  GE");
/// assert_eq!(msg.view(), MarketView::Nbbo(&nbbo.decoded()));
/// assert_eq!(msg.order(), None);
/// ```
#[repr(C, align(16))]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MarketMessage {
    /// A [`DecodedOrder`]'s or a [`DecodedNbbo`]'s bytes, in two 16-byte halves.
    halves: [[u8; 16]; 2],
}

/// What a [`MarketMessage`] holds, borrowed from it.
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, MarketMessage, MarketView, Order};
/// let order = Order::new(1, 7, *b"abc123", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
/// match MarketMessage::from(order).view() {
///     MarketView::Order(o) => assert_eq!(o.account(), 7),
///     MarketView::Nbbo(_) => unreachable!(),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketView<'a> {
    /// An order to check against the symbol's last NBBO.
    Order(&'a DecodedOrder),
    /// A market data update for the symbol.
    Nbbo(&'a DecodedNbbo),
}

impl From<Order> for MarketMessage {
    fn from(order: Order) -> Self {
        MarketMessage::of_order(&order)
    }
}

impl From<Nbbo> for MarketMessage {
    fn from(nbbo: Nbbo) -> Self {
        MarketMessage::of_nbbo(&nbbo)
    }
}

/// The type byte is set here, not taken from the value: a `DecodedOrder` is plain bytes
/// (`bytemuck` can make one of any 32), and [`MarketMessage::view`] reads the kind from it.
impl From<DecodedOrder> for MarketMessage {
    fn from(mut order: DecodedOrder) -> Self {
        order.fix_type = ORDER_TYPE;
        MarketMessage {
            halves: bytemuck::cast(order),
        }
    }
}

/// The type byte is set and the unused bytes zeroed here, as for [`DecodedOrder`].
impl From<DecodedNbbo> for MarketMessage {
    fn from(mut nbbo: DecodedNbbo) -> Self {
        nbbo.fix_type = NBBO_TYPE;
        nbbo.zeros = [0; 11];
        MarketMessage {
            halves: bytemuck::cast(nbbo),
        }
    }
}

impl MarketMessage {
    /// The message of an order viewed in place (in a frame's payload, say): its fields are
    /// decoded straight into the message.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, MarketMessage, Order};
    /// let order = Order::new(1, 7, *b"abc123", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
    /// let in_frame = Order::from_payload(order.as_bytes())?;
    /// assert_eq!(MarketMessage::of_order(in_frame).order(), Some(&order.decoded()));
    /// # Ok::<(), bettong_apps::market_spread::FixishError>(())
    /// ```
    #[inline]
    pub fn of_order(order: &Order) -> Self {
        let p = order.as_bytes();
        // Bytes 0..8: type and side (wire 0..2), then the order id (wire 6..12), from one
        // 8-byte load at wire offset 6 moved up two bytes.
        let ids = (le64(p, 0) & 0xFFFF) | (le64(p, 6) << 16);
        // Bytes 8..16: the account (wire 2..6) in native order, then the symbol (wire 12..16).
        let account = u32::from_le_bytes(order.account().to_ne_bytes());
        let keyed = u64::from(account) | (u64::from(le32(p, 12)) << 32);
        MarketMessage::of_words([ids, keyed, ne64(p, 16), ne64(p, 24)])
    }

    /// The message of an NBBO update viewed in place, decoded straight into it.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, MarketMessage, Nbbo};
    /// let nbbo = Nbbo::new(pad_symbol("GE"), [b'0'; 21], 30.0, 30.01);
    /// let msg = MarketMessage::of_nbbo(&nbbo);
    /// assert_eq!((msg.nbbo(), msg.order(), msg.symbol()), (Some(&nbbo.decoded()), None, b"  GE"));
    /// ```
    #[inline]
    pub fn of_nbbo(nbbo: &Nbbo) -> Self {
        let p = nbbo.as_bytes();
        // Bytes 0..16: the type, zeros, the symbol (wire 1..5) at 12.
        let keyed = u64::from(le32(p, 1)) << 32;
        MarketMessage::of_words([u64::from(NBBO_TYPE), keyed, ne64(p, 26), ne64(p, 34)])
    }

    /// The message whose bytes are `words`, each as a little-endian value, stored a half at a
    /// time ([`whole`]).
    #[inline(always)]
    fn of_words([a, b, c, d]: [u64; 4]) -> Self {
        let half = |lo: u64, hi: u64| whole(u128::from(lo) | (u128::from(hi) << 64));
        MarketMessage {
            halves: [half(a, b), half(c, d)],
        }
    }

    /// The order or NBBO update this message is.
    #[inline]
    pub fn view(&self) -> MarketView<'_> {
        // Only `of_order`, `of_nbbo` and the `From`s of the decoded kinds build a message, so
        // its first byte is the wire's type byte of one of the two.
        if self.halves[0][0] == ORDER_TYPE {
            MarketView::Order(bytemuck::cast_ref(&self.halves))
        } else {
            MarketView::Nbbo(bytemuck::cast_ref(&self.halves))
        }
    }

    /// The order, if this message is one.
    pub fn order(&self) -> Option<&DecodedOrder> {
        match self.view() {
            MarketView::Order(o) => Some(o),
            MarketView::Nbbo(_) => None,
        }
    }

    /// The NBBO update, if this message is one.
    pub fn nbbo(&self) -> Option<&DecodedNbbo> {
        match self.view() {
            MarketView::Nbbo(n) => Some(n),
            MarketView::Order(_) => None,
        }
    }

    /// The symbol the message is about (the key): at the same place in both kinds, so reading
    /// it takes no branch.
    #[inline]
    pub fn symbol(&self) -> &[u8; 4] {
        bytemuck::from_bytes(&self.halves[0][SYMBOL_AT..SYMBOL_AT + 4])
    }
}

impl fmt::Debug for MarketMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.view() {
            MarketView::Order(o) => f.debug_tuple("Order").field(o).finish(),
            MarketView::Nbbo(n) => f.debug_tuple("Nbbo").field(n).finish(),
        }
    }
}

/// The 8 bytes of `p` at `at` as a little-endian value.
#[inline(always)]
fn le64(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The 4 bytes of `p` at `at` as a little-endian value.
#[inline(always)]
fn le32(p: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&p[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The big-endian 8 bytes of `p` at `at` turned into native order, as a little-endian value
/// (what [`MarketMessage::of_words`] stores): on this machine, one byte swap.
#[inline(always)]
fn ne64(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_le_bytes(u64::from_be_bytes(b).to_ne_bytes())
}

/// Decodes one frame payload (without its length header) into an order or an NBBO update.
///
/// Type byte 1 needs exactly 53 bytes and 2 exactly 42; anything else is an error.
///
/// ```
/// use bettong_apps::market_spread::{decode, FixishError};
/// assert!(decode(&[2; 42])?.nbbo().is_some());
/// assert_eq!(decode(&[]), Err(FixishError::Empty));
/// assert_eq!(decode(&[3; 42]), Err(FixishError::UnknownType(3)));
/// # Ok::<(), FixishError>(())
/// ```
pub fn decode(payload: &[u8]) -> Result<MarketMessage, FixishError> {
    match payload.first() {
        None => Err(FixishError::Empty),
        Some(&ORDER_TYPE) => Order::from_payload(payload).map(MarketMessage::of_order),
        Some(&NBBO_TYPE) => Nbbo::from_payload(payload).map(MarketMessage::of_nbbo),
        Some(&other) => Err(FixishError::UnknownType(other)),
    }
}

/// The key of a message: its raw 4 symbol bytes, leading spaces included.
///
/// ```
/// use bettong_apps::market_spread::{decode, symbol_key};
/// let mut payload = [0u8; 42];
/// payload[0] = 2;
/// payload[1..5].copy_from_slice(b"   F");
/// assert_eq!(symbol_key(&decode(&payload)?), b"   F");
/// # Ok::<(), bettong_apps::market_spread::FixishError>(())
/// ```
pub fn symbol_key(msg: &MarketMessage) -> &[u8; 4] {
    msg.symbol()
}

/// Per-symbol state: the last NBBO and whether orders on the symbol are rejected.
///
/// A fresh symbol rejects (Wallaroo's default): until its first NBBO arrives every order on it
/// produces an [`OrderResult`], which is why runs send the initial NBBO file first.
///
/// ```
/// use bettong_apps::market_spread::SymbolData;
/// let s = SymbolData::default();
/// assert!(s.should_reject_trades);
/// assert_eq!((s.last_bid, s.last_offer), (0.0, 0.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SymbolData {
    /// Whether an order on this symbol produces an [`OrderResult`].
    pub should_reject_trades: bool,
    /// Bid of the last NBBO update.
    pub last_bid: f64,
    /// Offer of the last NBBO update.
    pub last_offer: f64,
}

impl Default for SymbolData {
    fn default() -> Self {
        SymbolData {
            should_reject_trades: true,
            last_bid: 0.0,
            last_offer: 0.0,
        }
    }
}

impl SymbolData {
    /// Applies an NBBO update: stores its bid and offer and whether the spread is too wide.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Nbbo, SymbolData};
    /// let mut s = SymbolData::default();
    /// s.update_nbbo(&Nbbo::new(pad_symbol("GE"), [b'0'; 21], 30.0, 30.01).decoded());
    /// assert!(!s.should_reject_trades);
    /// ```
    pub fn update_nbbo(&mut self, nbbo: &DecodedNbbo) {
        let (bid, offer) = (nbbo.bid(), nbbo.offer());
        self.should_reject_trades = is_rejected_spread(bid, offer);
        self.last_bid = bid;
        self.last_offer = offer;
    }

    /// Checks an order: an [`OrderResult`] stamped `now_ns` if the symbol rejects trades, else
    /// nothing. The order's own price, side and quantity take no part in the decision.
    ///
    /// ```
    /// use bettong_apps::market_spread::{pad_symbol, Order, SymbolData};
    /// let order = Order::new(1, 1, *b"000001", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
    /// let out = SymbolData::default().check_order(&order.decoded(), 7);
    /// assert_eq!(out.map(|r| r.timestamp), Some(7));
    /// ```
    pub fn check_order(&self, order: &DecodedOrder, now_ns: u64) -> Option<OrderResult> {
        self.check_order_with(order, || now_ns)
    }

    /// Like [`check_order`](Self::check_order), but asks `now` for the timestamp only when there
    /// is an output: all but a few orders are accepted, and a clock read on each of them would
    /// cost more than the check itself.
    fn check_order_with(
        &self,
        order: &DecodedOrder,
        now: impl FnOnce() -> u64,
    ) -> Option<OrderResult> {
        self.should_reject_trades
            .then(|| OrderResult::new(order, self.last_bid, self.last_offer, now()))
    }
}

/// The "Check Market Data" state computation: an NBBO updates the state and outputs nothing; an
/// order outputs an [`OrderResult`] if its symbol rejects trades.
///
/// `now_ns` is the output's timestamp, passed in so that the function stays pure; the engine
/// passes [`wall_clock_ns`], as Wallaroo does.
///
/// ```
/// use bettong_apps::market_spread::{check, pad_symbol, Nbbo, Order, SymbolData};
/// let mut state = SymbolData::default();
/// let wide = Nbbo::new(pad_symbol("GE"), [b'0'; 21], 30.0, 30.10);
/// assert!(check(wide.into(), &mut state, 1).is_none());
/// let order = Order::new(1, 1, *b"000001", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
/// let out = check(order.into(), &mut state, 2).expect("a wide spread rejects the order");
/// assert_eq!((out.bid, out.offer), (30.0, 30.10));
/// ```
pub fn check(msg: MarketMessage, state: &mut SymbolData, now_ns: u64) -> Option<OrderResult> {
    check_with(msg, state, || now_ns)
}

/// [`check`] with the timestamp read from [`wall_clock_ns`], and only when there is an output:
/// the state computation [`application`] runs. NBBO updates and accepted orders, nearly all of
/// the input, never read the clock.
///
/// ```
/// use bettong_apps::market_spread::{check_now, pad_symbol, wall_clock_ns, Order, SymbolData};
/// let order = Order::new(1, 1, *b"000001", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
/// let before = wall_clock_ns();
/// let out = check_now(order.into(), &mut SymbolData::default()).expect("no NBBO yet: rejected");
/// assert!(out.timestamp >= before);
/// ```
pub fn check_now(msg: MarketMessage, state: &mut SymbolData) -> Option<OrderResult> {
    check_with(msg, state, wall_clock_ns)
}

fn check_with(
    msg: MarketMessage,
    state: &mut SymbolData,
    now: impl FnOnce() -> u64,
) -> Option<OrderResult> {
    match msg.view() {
        MarketView::Nbbo(nbbo) => {
            state.update_nbbo(nbbo);
            None
        }
        MarketView::Order(order) => state.check_order_with(order, now),
    }
}

/// Name of the source that takes orders (Wallaroo's name: `--in Orders@HOST:PORT`).
pub const ORDERS_SOURCE: &str = "Orders";

/// The name of Market Spread's sink (`--out OrderResults@HOST:PORT`, or just `--out HOST:PORT`).
pub const SINK: &str = "OrderResults";
/// Name of the source that takes NBBO updates (Wallaroo's name: `--in Nbbo@HOST:PORT`).
pub const NBBO_SOURCE: &str = "Nbbo";
/// Name of the application, as [`Application::name`] reports it.
pub const APP_NAME: &str = "market spread";

/// The decoder of the "Orders" source: a 53-byte order payload, decoded out of the frame into a
/// [`MarketMessage`]. Anything else, an NBBO included, is a [`DecodeError`] that says
/// which source refused what.
///
/// ```
/// use bettong_apps::market_spread::{decode_order, pad_symbol, Nbbo, Order};
/// let order = Order::new(1, 7, *b"abc123", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
/// assert_eq!(decode_order(order.as_bytes()).unwrap().order(), Some(&order.decoded()));
///
/// let nbbo = Nbbo::new(pad_symbol("GE"), [b'0'; 21], 30.0, 30.01);
/// let err = decode_order(nbbo.as_bytes()).unwrap_err().to_string();
/// assert!(err.contains("belong on the Nbbo source"), "{err}");
/// let err = decode_order(&order.as_bytes()[..52]).unwrap_err().to_string();
/// assert_eq!(err, "Orders source: not an order: order payload must be 53 bytes, got 52");
/// ```
pub fn decode_order(payload: &[u8]) -> Result<MarketMessage, DecodeError> {
    order_on_orders_source(payload).map(MarketMessage::of_order)
}

/// The order in `payload`, viewed in place, with the errors of the "Orders" source (VWAP's
/// decoder reads its transact time before it decodes it).
pub(crate) fn order_on_orders_source(payload: &[u8]) -> Result<&Order, DecodeError> {
    if payload.first() == Some(&NBBO_TYPE) {
        return Err(DecodeError::new(
            "Orders source: got an NBBO message (type 2); NBBO updates belong on the Nbbo source",
        ));
    }
    Order::from_payload(payload).map_err(|e| refused(ORDERS_SOURCE, "an order", ORDER_TYPE, e))
}

/// The decoder of the "Nbbo" source: a 42-byte NBBO payload, decoded out of the frame into a
/// [`MarketMessage`]. Anything else, an order included, is a [`DecodeError`].
///
/// ```
/// use bettong_apps::market_spread::{decode_nbbo, pad_symbol, Nbbo, Order};
/// let nbbo = Nbbo::new(pad_symbol("GE"), [b'0'; 21], 30.0, 30.01);
/// assert_eq!(decode_nbbo(nbbo.as_bytes()).unwrap().nbbo(), Some(&nbbo.decoded()));
///
/// let order = Order::new(1, 7, *b"abc123", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
/// let err = decode_nbbo(order.as_bytes()).unwrap_err().to_string();
/// assert!(err.contains("belong on the Orders source"), "{err}");
/// let err = decode_nbbo(&[9; 42]).unwrap_err().to_string();
/// assert!(err.starts_with("Nbbo source: not an NBBO: unknown fixish message type 9"), "{err}");
/// ```
pub fn decode_nbbo(payload: &[u8]) -> Result<MarketMessage, DecodeError> {
    if payload.first() == Some(&ORDER_TYPE) {
        return Err(DecodeError::new(
            "Nbbo source: got an order (type 1); orders belong on the Orders source",
        ));
    }
    match Nbbo::from_payload(payload) {
        Ok(nbbo) => Ok(MarketMessage::of_nbbo(nbbo)),
        Err(e) => Err(refused(NBBO_SOURCE, "an NBBO", NBBO_TYPE, e)),
    }
}

/// The message for a payload that a source refuses. An unknown type byte names the one type
/// this source takes: [`FixishError`]'s own text lists both, which would mislead here.
fn refused(source: &str, kind: &str, fix_type: u8, e: FixishError) -> DecodeError {
    match e {
        FixishError::UnknownType(t) => DecodeError::new(format!(
            "{source} source: not {kind}: unknown fixish message type {t} (expected {fix_type})"
        )),
        e => DecodeError::new(format!("{source} source: not {kind}: {e}")),
    }
}

/// The sink's encoder: each [`OrderResult`] as its 59-byte frame.
///
/// ```
/// use bettong_apps::market_spread::{encode, pad_symbol, Order, OrderResult};
/// let order = Order::new(1, 7, *b"abc123", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
/// let mut out = Vec::new();
/// encode(&OrderResult::new(&order.decoded(), 29.0, 31.0, 5), &mut out);
/// assert_eq!(out.len(), 59);
/// ```
pub fn encode(result: &OrderResult, out: &mut Vec<u8>) {
    result.encode_into(out);
}

/// The Market Spread application, Wallaroo's 0.5+ topology (reference §2.1): the "Orders" and
/// "Nbbo" sources merged, keyed by the raw 4-byte symbol, into one state computation over
/// [`SymbolData`] ([`check_now`]), and a TCP sink of framed [`OrderResult`]s.
///
/// Messages of one symbol from one connection reach its state in the order they were sent;
/// messages from different connections have no order between them, which is why the initial
/// NBBO must have been processed before orders are sent.
///
/// ```
/// let app = bettong_apps::market_spread::application();
/// assert_eq!(app.name(), "market spread");
/// assert_eq!(app.source_names(), ["Orders", "Nbbo"]);
/// ```
///
/// Run it with `bettong market-spread --in Orders@127.0.0.1:7000,Nbbo@127.0.0.1:7001
/// --out 127.0.0.1:5555`, or embedded:
///
/// ```no_run
/// use bettong::runtime::config::EngineConfig;
/// use bettong::Engine;
///
/// let mut config = EngineConfig::default();
/// config.inputs = vec![
///     (Some("Orders".into()), "127.0.0.1:7000".parse().unwrap()),
///     (Some("Nbbo".into()), "127.0.0.1:7001".parse().unwrap()),
/// ];
/// config.outputs = vec![(None, "127.0.0.1:5555".parse().unwrap())];
/// let engine = Engine::start(bettong_apps::market_spread::application(), config)?;
/// engine.stop_handle().stop();
/// eprintln!("{}", engine.join()?);
/// # Ok::<(), bettong::Error>(())
/// ```
pub fn application() -> Application {
    let orders = Pipeline::source(ORDERS_SOURCE, TcpSource::new(decode_order));
    let nbbo = Pipeline::source(NBBO_SOURCE, TcpSource::new(decode_nbbo));
    let pipeline = spread_check(orders.merge(nbbo)).to_sink(SINK, TcpSink::new(encode));
    Application::new(APP_NAME, pipeline)
}

/// The heart of Market Spread, for any stream of market messages: key by symbol, check each
/// message against the symbol's state. [`application`] feeds it from TCP; an embedding host
/// feeds it from an [`InProcessSource`](bettong::InProcessSource) (see
/// `examples/embedded_spread_check.rs`).
///
/// ```
/// use bettong_apps::market_spread::{spread_check, symbol_key, MarketMessage, OrderResult};
/// use bettong::{Application, InProcessSource, Pipeline, PolledSink};
/// let market = InProcessSource::new(symbol_key);
/// let (sink, _results) = PolledSink::<OrderResult>::new(1024);
/// let app = Application::new(
///     "embedded spread check",
///     spread_check(Pipeline::source("Market", market.clone())).to_sink("Results", sink),
/// );
/// # let _ = app;
/// ```
pub fn spread_check(market: Pipeline<MarketMessage>) -> Pipeline<OrderResult> {
    market
        .key_by(symbol_key)
        .to_state(check_now)
        .name("check market data")
}

/// The output of Market Spread: a rejected order with the NBBO it was checked against.
///
/// Encoded as `[u32 BE 55][u8 side][u32 account][6 order_id][4 symbol][f64 qty][f64 price]
/// [f64 bid][f64 offer][u64 timestamp]`, 59 bytes, all big-endian (Wallaroo's Pony encoder).
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, Order, OrderResult};
/// let order = Order::new(2, 9, *b"q1w2e3", pad_symbol("GE"), 20.0, 30.0, [b'0'; 21]);
/// let result = OrderResult::new(&order.decoded(), 29.9, 30.1, 123);
/// let mut buf = Vec::new();
/// result.encode_into(&mut buf);
/// assert_eq!(buf.len(), 59);
/// assert_eq!(OrderResult::decode(&buf[4..])?, result);
/// # Ok::<(), bettong_apps::market_spread::FixishError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderResult {
    /// Side of the order: 1 = buy, 2 = sell.
    pub side: u8,
    /// Account of the order.
    pub account: u32,
    /// Order id, 6 ASCII bytes.
    pub order_id: [u8; 6],
    /// Symbol, 4 bytes right-aligned with leading spaces.
    pub symbol: [u8; 4],
    /// Order quantity.
    pub qty: f64,
    /// Order price.
    pub price: f64,
    /// The symbol's last bid when the order was checked.
    pub bid: f64,
    /// The symbol's last offer when the order was checked.
    pub offer: f64,
    /// Wall-clock ns at the moment of computation.
    pub timestamp: u64,
}

/// The OrderResult payload layout, so that encoding and decoding are one cast each.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct OrderResultWire {
    side: u8,
    account: [u8; 4],
    order_id: [u8; 6],
    symbol: [u8; 4],
    qty: [u8; 8],
    price: [u8; 8],
    bid: [u8; 8],
    offer: [u8; 8],
    timestamp: [u8; 8],
}

const _: () = assert!(std::mem::size_of::<OrderResultWire>() == ORDER_RESULT_PAYLOAD_LEN);

impl OrderResult {
    /// The result for `order` checked against the given bid and offer at `timestamp` ns.
    pub fn new(order: &DecodedOrder, bid: f64, offer: f64, timestamp: u64) -> OrderResult {
        OrderResult {
            side: order.side(),
            account: order.account(),
            order_id: *order.order_id(),
            symbol: *order.symbol(),
            qty: order.qty(),
            price: order.price(),
            bid,
            offer,
            timestamp,
        }
    }

    /// The 59-byte frame: length header 55 and the payload.
    pub fn to_frame(&self) -> [u8; ORDER_RESULT_FRAME_LEN] {
        let wire = OrderResultWire {
            side: self.side,
            account: self.account.to_be_bytes(),
            order_id: self.order_id,
            symbol: self.symbol,
            qty: self.qty.to_be_bytes(),
            price: self.price.to_be_bytes(),
            bid: self.bid.to_be_bytes(),
            offer: self.offer.to_be_bytes(),
            timestamp: self.timestamp.to_be_bytes(),
        };
        let mut frame = [0u8; ORDER_RESULT_FRAME_LEN];
        let (len, payload) = frame.split_at_mut(4);
        len.copy_from_slice(&(ORDER_RESULT_PAYLOAD_LEN as u32).to_be_bytes());
        payload.copy_from_slice(bytemuck::bytes_of(&wire));
        frame
    }

    /// Appends the framed result (exactly 59 bytes) to `buf`; the only allocation is the Vec's
    /// own growth, so a sink's batch buffer that is already large enough never allocates.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.to_frame());
    }

    /// Decodes a result from its 55-byte frame payload (the frame without its length header).
    ///
    /// ```
    /// use bettong_apps::market_spread::OrderResult;
    /// assert!(OrderResult::decode(&[0; 54]).is_err());
    /// ```
    pub fn decode(frame_payload: &[u8]) -> Result<OrderResult, FixishError> {
        check_len("order result", frame_payload, ORDER_RESULT_PAYLOAD_LEN)?;
        let wire: &OrderResultWire =
            bytemuck::try_from_bytes(frame_payload).map_err(|_| FixishError::WrongLength {
                kind: "order result",
                expected: ORDER_RESULT_PAYLOAD_LEN,
                actual: frame_payload.len(),
            })?;
        Ok(OrderResult {
            side: wire.side,
            account: u32::from_be_bytes(wire.account),
            order_id: wire.order_id,
            symbol: wire.symbol,
            qty: f64::from_be_bytes(wire.qty),
            price: f64::from_be_bytes(wire.price),
            bid: f64::from_be_bytes(wire.bid),
            offer: f64::from_be_bytes(wire.offer),
            timestamp: u64::from_be_bytes(wire.timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: &[u8; 21] = b"20160902-15:47:52.000";

    /// An order for "  GE" written byte by byte from the layout, not through `Order::new`.
    fn hand_order() -> Vec<u8> {
        let mut p = Vec::new();
        p.push(1); // type
        p.push(2); // side: sell
        p.extend_from_slice(&[0x00, 0x00, 0x01, 0x2c]); // account 300
        p.extend_from_slice(b"aB3dE9"); // order id
        p.extend_from_slice(b"  GE"); // symbol
        p.extend_from_slice(&[0x40, 0x84, 0x50, 0, 0, 0, 0, 0]); // qty 650.0
        p.extend_from_slice(&[0x40, 0x3e, 0x80, 0, 0, 0, 0, 0]); // price 30.5
        p.extend_from_slice(TIME);
        p
    }

    /// An NBBO for "INSM" (Wallaroo's first initial-NBBO record) from the layout.
    fn hand_nbbo() -> Vec<u8> {
        let mut p = Vec::new();
        p.push(2);
        p.extend_from_slice(b"INSM");
        p.extend_from_slice(TIME);
        p.extend_from_slice(&[0x40, 0x33, 0xa6, 0x87, 0x2b, 0x02, 0x0c, 0x4a]); // bid 19.6505
        p.extend_from_slice(&[0x40, 0x33, 0xb6, 0xae, 0x7d, 0x56, 0x6c, 0xf4]); // offer 19.7136
        p
    }

    #[test]
    fn hand_written_order_decodes_and_reencodes() {
        let payload = hand_order();
        assert_eq!(payload.len(), 53);
        let msg = decode(&payload).expect("an order");
        let MarketView::Order(&order) = msg.view() else {
            panic!("not an order: {msg:?}");
        };
        assert_eq!(order.side(), 2);
        assert_eq!(order.account(), 300);
        assert_eq!(order.order_id(), b"aB3dE9");
        assert_eq!(order.symbol(), b"  GE");
        assert_eq!(order.qty(), 650.0);
        assert_eq!(order.price(), 30.5);
        let wire = Order::from_payload(&payload).expect("an order's layout");
        assert_eq!(wire.transact_time(), TIME);
        assert_eq!(wire.as_bytes(), &payload[..]);

        let built = Order::new(2, 300, *b"aB3dE9", pad_symbol("GE"), 650.0, 30.5, *TIME);
        assert_eq!(&built, wire);
        assert_eq!(built.decoded(), order);
        let mut framed = Vec::new();
        built.encode_framed(&mut framed);
        assert_eq!(&framed[..4], &[0, 0, 0, 53]);
        assert_eq!(&framed[4..], &payload[..]);
    }

    #[test]
    fn hand_written_nbbo_decodes_and_reencodes() {
        let payload = hand_nbbo();
        assert_eq!(payload.len(), 42);
        let msg = decode(&payload).expect("an NBBO");
        let MarketView::Nbbo(nbbo) = msg.view() else {
            panic!("not an NBBO: {msg:?}");
        };
        assert_eq!(nbbo.symbol(), b"INSM");
        assert_eq!(nbbo.bid(), 19.6505);
        assert_eq!(nbbo.offer(), 19.7136);
        let wire = Nbbo::from_payload(&payload).expect("an NBBO's layout");
        assert_eq!(wire.transact_time(), TIME);
        assert_eq!(wire.as_bytes(), &payload[..]);
        assert_eq!(&wire.decoded(), nbbo);

        let mut framed = Vec::new();
        Nbbo::new(*b"INSM", *TIME, 19.6505, 19.7136).encode_framed(&mut framed);
        assert_eq!(&framed[..4], &[0, 0, 0, 42]);
        assert_eq!(&framed[4..], &payload[..]);
    }

    #[test]
    fn order_result_is_59_exact_bytes() {
        let msg = decode(&hand_order()).expect("the hand order decodes");
        let Some(order) = msg.order() else {
            panic!("the hand order decodes to {msg:?}");
        };
        let result = OrderResult::new(order, 30.25, 30.75, 0x0102_0304_0506_0708);
        let mut expected = Vec::new();
        expected.extend_from_slice(&[0, 0, 0, 55]);
        expected.push(2);
        expected.extend_from_slice(&[0x00, 0x00, 0x01, 0x2c]);
        expected.extend_from_slice(b"aB3dE9");
        expected.extend_from_slice(b"  GE");
        expected.extend_from_slice(&[0x40, 0x84, 0x50, 0, 0, 0, 0, 0]); // qty 650.0
        expected.extend_from_slice(&[0x40, 0x3e, 0x80, 0, 0, 0, 0, 0]); // price 30.5
        expected.extend_from_slice(&[0x40, 0x3e, 0x40, 0, 0, 0, 0, 0]); // bid 30.25
        expected.extend_from_slice(&[0x40, 0x3e, 0xc0, 0, 0, 0, 0, 0]); // offer 30.75
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(expected.len(), 59);

        let mut buf = vec![0xff]; // appends, never overwrites
        result.encode_into(&mut buf);
        assert_eq!(&buf[1..], &expected[..]);
        assert_eq!(OrderResult::decode(&expected[4..]), Ok(result));
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert_eq!(decode(&[]), Err(FixishError::Empty));
        assert_eq!(decode(&[0; 53]), Err(FixishError::UnknownType(0)));
        assert_eq!(decode(&[3; 42]), Err(FixishError::UnknownType(3)));
        let mut order = hand_order();
        order.push(0);
        assert_eq!(
            decode(&order),
            Err(FixishError::WrongLength {
                kind: "order",
                expected: 53,
                actual: 54
            })
        );
        // An NBBO-sized payload with the order type byte is an error, not a truncated order.
        let mut nbbo_as_order = hand_nbbo();
        nbbo_as_order[0] = 1;
        assert!(matches!(
            decode(&nbbo_as_order),
            Err(FixishError::WrongLength { actual: 42, .. })
        ));
        assert!(matches!(
            decode(&hand_nbbo()[..41]),
            Err(FixishError::WrongLength {
                kind: "NBBO",
                expected: 42,
                actual: 41
            })
        ));
        assert!(matches!(decode(&[1]), Err(FixishError::WrongLength { .. })));
        assert!(matches!(
            Order::from_payload(&hand_nbbo()),
            Err(FixishError::UnknownType(2))
        ));
        assert!(matches!(
            Nbbo::from_payload(&hand_order()),
            Err(FixishError::UnknownType(1))
        ));
        assert!(OrderResult::decode(&[0; 59]).is_err());

        let msg = decode(&[7]).map(|_| ()).unwrap_err().to_string();
        assert!(msg.contains("unknown fixish message type 7"), "{msg}");
        let msg = decode(&hand_nbbo()[..40])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "NBBO payload must be 42 bytes, got 40");
        assert_eq!(
            decode(&[]).map(|_| ()).unwrap_err().to_string(),
            "empty fixish payload: no message type byte"
        );
    }

    #[test]
    fn symbols_are_right_aligned() {
        assert_eq!(&pad_symbol(""), b"    ");
        assert_eq!(&pad_symbol("F"), b"   F");
        assert_eq!(&pad_symbol("GE"), b"  GE");
        assert_eq!(&pad_symbol("IVR"), b" IVR");
        assert_eq!(&pad_symbol("INSM"), b"INSM");
        assert_eq!(&pad_symbol("GOOGL"), b"GOOG");
        assert_eq!(
            try_pad_symbol("GOOGL"),
            Err(FixishError::SymbolTooLong("GOOGL".into()))
        );
        let order = Order::new(1, 1, *b"000001", pad_symbol("GE"), 1.0, 1.0, *TIME);
        assert_eq!(symbol_key(&order.into()), b"  GE");
    }

    fn nbbo(bid: f64, offer: f64) -> MarketMessage {
        Nbbo::new(pad_symbol("GE"), *TIME, bid, offer).into()
    }

    fn order() -> MarketMessage {
        Order::new(1, 17, *b"ABCDEF", pad_symbol("GE"), 100.0, 12.0, *TIME).into()
    }

    #[test]
    fn spread_rule_matches_wallaroo() {
        // Absolute spread.
        assert!(is_rejected_spread(10.0, 10.06));
        assert!(is_rejected_spread(100.0, 100.25));
        assert!(is_rejected_spread(0.0, 0.05));
        assert!(!is_rejected_spread(10.0, 10.04));
        assert!(!is_rejected_spread(10.0, 10.0));
        // Relative spread: 0.03 wide is fine at 30 but not around 0.5 (5.8%).
        assert!(is_rejected_spread(0.50, 0.53));
        assert!(is_rejected_spread(0.5, 0.54));
        assert!(!is_rejected_spread(30.0, 30.03));
        assert!(!is_rejected_spread(1.0, 1.04)); // 3.9%
                                                 // Zero prices: the NaN relative spread compares false, as in Wallaroo.
        assert!(!is_rejected_spread(0.0, 0.0));
        // A crossed market has a negative spread and is accepted.
        assert!(!is_rejected_spread(10.0, 9.9));
    }

    #[test]
    fn order_before_any_nbbo_is_rejected() {
        let mut state = SymbolData::default();
        let out = check(order(), &mut state, 99).expect("fresh state rejects");
        assert_eq!(out.side, 1);
        assert_eq!(out.account, 17);
        assert_eq!(&out.order_id, b"ABCDEF");
        assert_eq!(&out.symbol, b"  GE");
        assert_eq!((out.qty, out.price), (100.0, 12.0));
        assert_eq!((out.bid, out.offer, out.timestamp), (0.0, 0.0, 99));
        // Checking an order does not change the state.
        assert_eq!(state, SymbolData::default());
    }

    #[test]
    fn nbbo_updates_state_and_outputs_carry_last_nbbo() {
        let mut state = SymbolData::default();
        assert!(check(nbbo(30.0, 30.02), &mut state, 1).is_none());
        assert!(!state.should_reject_trades);
        assert_eq!((state.last_bid, state.last_offer), (30.0, 30.02));
        assert!(check(order(), &mut state, 2).is_none());

        assert!(check(nbbo(30.0, 30.07), &mut state, 3).is_none());
        assert!(state.should_reject_trades);
        let out = check(order(), &mut state, 4).expect("wide spread rejects");
        assert_eq!((out.bid, out.offer, out.timestamp), (30.0, 30.07, 4));

        // Relative spread: narrow in absolute terms but > 5% of a small price.
        assert!(check(nbbo(0.5, 0.53), &mut state, 5).is_none());
        let out = check(order(), &mut state, 6).expect("relative spread rejects");
        assert_eq!((out.bid, out.offer), (0.5, 0.53));

        // A narrow spread again re-opens trading.
        assert!(check(nbbo(12.0, 12.03), &mut state, 7).is_none());
        assert!(check(order(), &mut state, 8).is_none());
    }

    #[test]
    fn boundary_spreads() {
        // A nominal 0.05 spread is decided by what the f64 subtraction yields, exactly as in
        // Wallaroo: 10.05 - 10.0 rounds above 0.05, 100.0 - 99.95 rounds below it.
        for (bid, offer, rejected) in [
            (10.0, 10.05, true),
            (1.0, 1.05, true),
            (0.5, 0.55, true),
            (99.95, 100.0, false),
        ] {
            let mut state = SymbolData::default();
            assert!(check(nbbo(bid, offer), &mut state, 0).is_none());
            assert_eq!(state.should_reject_trades, rejected, "{bid} {offer}");
            assert_eq!(is_rejected_spread(bid, offer), rejected);
        }
        // A difference of exactly 0.05 (0.1 is exactly twice 0.05 in binary) rejects: `>=`.
        assert_eq!(0.1 - 0.05, 0.05);
        assert!(is_rejected_spread(0.05, 0.1));
        // Exactly representable: 0.25 vs 0.3125 is a spread of 0.0625 (>= 0.05).
        assert!(is_rejected_spread(2.25, 2.3125));
        // 0.046875 is exactly representable and below 0.05, at mid 2.0234 (2.3%).
        assert!(!is_rejected_spread(2.0, 2.046875));
        // Relative: spread 0.046875 at mid 0.9375 is exactly 5% in binary.
        let (bid, offer) = (0.9140625, 0.9609375);
        assert_eq!((offer - bid) / ((bid + offer) / 2.0), 0.05);
        assert!(is_rejected_spread(bid, offer));
    }

    #[test]
    fn each_source_takes_only_its_own_kind() {
        let order = hand_order();
        let nbbo = hand_nbbo();
        assert!(decode_order(&order).is_ok_and(|m| m.order().is_some()));
        assert!(decode_nbbo(&nbbo).is_ok_and(|m| m.nbbo().is_some()));
        // The other kind, well formed, is still refused, with a hint where it belongs.
        let e = decode_order(&nbbo).unwrap_err().to_string();
        assert!(e.starts_with("Orders source: got an NBBO"), "{e}");
        let e = decode_nbbo(&order).unwrap_err().to_string();
        assert!(e.starts_with("Nbbo source: got an order"), "{e}");
        assert_eq!(
            decode_order(&[]).unwrap_err().to_string(),
            "Orders source: not an order: empty fixish payload: no message type byte"
        );
        assert_eq!(
            decode_nbbo(&nbbo[..41]).unwrap_err().to_string(),
            "Nbbo source: not an NBBO: NBBO payload must be 42 bytes, got 41"
        );
        let mut odd = order.clone();
        odd[0] = 3;
        assert_eq!(
            decode_order(&odd).unwrap_err().to_string(),
            "Orders source: not an order: unknown fixish message type 3 (expected 1)"
        );
    }

    #[test]
    fn check_now_reads_the_clock_only_for_outputs() {
        let mut state = SymbolData::default();
        assert!(check_now(nbbo(30.0, 30.01), &mut state).is_none());
        assert!(check_now(order(), &mut state).is_none());
        let mut read = false;
        assert!(check_with(order(), &mut state, || {
            read = true;
            0
        })
        .is_none());
        assert!(!read, "an accepted order must not read the clock");
        assert!(check_now(nbbo(30.0, 30.5), &mut state).is_none());
        let before = wall_clock_ns();
        let out = check_now(order(), &mut state).expect("wide spread rejects");
        assert!(out.timestamp >= before && out.timestamp <= wall_clock_ns());
    }

    /// The decoder's register-built halves (`of_words`): every field lands at its offset in
    /// native byte order, whatever its bytes, and the bytes no field owns are zero (equality and
    /// hashing read all 32).
    #[test]
    fn a_message_holds_its_fields_exactly_and_zeros_elsewhere() {
        for seed in 0u8..=255 {
            let mut order = [0u8; ORDER_PAYLOAD_LEN];
            let mut nbbo = [0u8; NBBO_PAYLOAD_LEN];
            for (i, b) in order.iter_mut().enumerate() {
                *b = seed
                    .wrapping_mul(31)
                    .wrapping_add((i as u8).wrapping_mul(7))
                    | 1;
            }
            for (i, b) in nbbo.iter_mut().enumerate() {
                *b = seed
                    .wrapping_mul(17)
                    .wrapping_add((i as u8).wrapping_mul(13))
                    | 1;
            }
            order[0] = ORDER_TYPE;
            nbbo[0] = NBBO_TYPE;
            let wire = Order::from_payload(&order).expect("an order's layout");
            let o = decode(&order).expect("an order");
            let bytes = bytemuck::bytes_of(&o.halves);
            assert_eq!(bytes[..2], order[..2], "type and side");
            assert_eq!(bytes[2..8], order[6..12], "order id");
            assert_eq!(bytes[8..12], wire.account().to_ne_bytes(), "account");
            assert_eq!(bytes[12..16], order[12..16], "symbol");
            assert_eq!(bytes[16..24], wire.qty().to_ne_bytes(), "qty");
            assert_eq!(bytes[24..32], wire.price().to_ne_bytes(), "price");
            let d = o.order().expect("an order's view");
            assert_eq!(
                (d.side(), d.account(), d.order_id(), d.symbol()),
                (wire.side(), wire.account(), wire.order_id(), wire.symbol())
            );
            assert_eq!(
                (d.qty().to_bits(), d.price().to_bits()),
                (wire.qty().to_bits(), wire.price().to_bits())
            );

            let wire = Nbbo::from_payload(&nbbo).expect("an NBBO's layout");
            let n = decode(&nbbo).expect("an NBBO");
            let bytes = bytemuck::bytes_of(&n.halves);
            assert_eq!(bytes[0], NBBO_TYPE);
            assert!(bytes[1..12].iter().all(|&b| b == 0), "{bytes:?}");
            assert_eq!(bytes[12..16], nbbo[1..5], "symbol");
            assert_eq!(bytes[16..24], wire.bid().to_ne_bytes(), "bid");
            assert_eq!(bytes[24..32], wire.offer().to_ne_bytes(), "offer");
            assert_eq!(n.symbol(), wire.symbol());
            assert_eq!(o.symbol(), &order[12..16]);
            // Decoded from a payload or built from a decoded value: the same message.
            assert_eq!(MarketMessage::from(*o.order().unwrap()), o);
            assert_eq!(MarketMessage::from(*n.nbbo().unwrap()), n);
            assert_eq!(
                MarketMessage::from(*Order::from_payload(&order).unwrap()),
                o
            );
        }
    }

    /// A decoded value made of any 32 bytes still becomes the message of its kind.
    #[test]
    fn a_message_from_a_decoded_value_is_of_that_kind_whatever_its_bytes() {
        let order: DecodedOrder = bytemuck::Zeroable::zeroed();
        let msg = MarketMessage::from(order);
        assert_eq!(msg.order().map(DecodedOrder::symbol), Some(&[0; 4]));
        let nbbo: DecodedNbbo = bytemuck::cast([ORDER_TYPE; MESSAGE_LEN]);
        let msg = MarketMessage::from(nbbo);
        let n = msg.nbbo().expect("an NBBO update");
        assert_eq!((n.symbol(), n.zeros), (&[ORDER_TYPE; 4], [0; 11]));
        assert_eq!(msg, MarketMessage::from(*n));
    }

    #[test]
    fn messages_are_small_copy_values() {
        assert_eq!(std::mem::size_of::<Order>(), 53);
        assert_eq!(std::mem::size_of::<Nbbo>(), 42);
        // Half a cache line, aligned so that its two 16-byte halves never straddle one.
        assert_eq!(std::mem::size_of::<MarketMessage>(), 32);
        assert_eq!(std::mem::align_of::<MarketMessage>(), 16);
        let wall = wall_clock_ns();
        assert!(wall > 1_600_000_000_000_000_000);
    }
}
