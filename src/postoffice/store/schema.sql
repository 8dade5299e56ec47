-- The embedded metadata schema (SQLite, WAL).  Version in meta('schema_version').
PRAGMA foreign_keys = ON;

CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY COLLATE NOCASE
);

-- AUTOINCREMENT: an id is never handed out twice, so nothing keyed by a deleted account
-- or mailbox (caches, event subscriptions, sessions) can mistake a new one for it.
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    address TEXT NOT NULL UNIQUE COLLATE NOCASE,
    domain TEXT NOT NULL COLLATE NOCASE REFERENCES domains(name),
    password_hash TEXT NOT NULL,
    scram_sha256 TEXT,
    quota_bytes INTEGER,
    quota_messages INTEGER,
    used_bytes INTEGER NOT NULL DEFAULT 0,
    used_messages INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    -- POP3 policy (issue 5; RFC 2449 LOGIN-DELAY and EXPIRE) and state
    pop_enabled INTEGER NOT NULL DEFAULT 1,
    pop_login_delay INTEGER NOT NULL DEFAULT 0,   -- seconds
    pop_expire_days INTEGER,                      -- NULL: never
    pop_apop_secret TEXT,                         -- retrievable on purpose: APOP needs it
    pop_last_login INTEGER                        -- unix seconds
);

CREATE TABLE IF NOT EXISTS aliases (
    address TEXT PRIMARY KEY COLLATE NOCASE,  -- "user@domain" or "@domain" (catch-all)
    domain TEXT NOT NULL COLLATE NOCASE REFERENCES domains(name),
    targets TEXT NOT NULL                     -- JSON array of addresses
);

CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    membership_modseq INTEGER NOT NULL DEFAULT 1,  -- last add or removal: keys the UID-array cache
    recent_uid INTEGER NOT NULL DEFAULT 0,  -- IMAP \Recent: UIDs above it not yet seen by a session
    UNIQUE (account_id, name)
);

-- Subscriptions are names, not mailboxes: they outlive a deleted mailbox (RFC 3501 §6.3.9).
CREATE TABLE IF NOT EXISTS subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;

-- One row per distinct message content (blob), shared by every mailbox entry that holds it.
-- The IMAP forms and search fields are computed once, at the first append.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    content BLOB,                 -- the raw message when small enough; NULL: in a blob file
    size INTEGER NOT NULL,
    header_end INTEGER NOT NULL,
    sent_date INTEGER,            -- Date: header, unix seconds (NULL if absent or unparsable)
    sent_day INTEGER,             -- days since 1970-01-01 of Date: in its own zone (SENT* keys)
    subject TEXT NOT NULL,        -- decoded
    base_subject TEXT NOT NULL,   -- RFC 5256 §2.1
    from_addr TEXT NOT NULL,      -- decoded "Name <a@b>, ..." for SEARCH FROM
    to_addr TEXT NOT NULL,
    cc_addr TEXT NOT NULL,
    bcc_addr TEXT NOT NULL,
    sort_from TEXT NOT NULL,      -- RFC 5256 SORT keys
    sort_to TEXT NOT NULL,
    sort_cc TEXT NOT NULL,
    display_from TEXT NOT NULL,   -- RFC 5957 DISPLAYFROM / DISPLAYTO
    display_to TEXT NOT NULL,
    message_id TEXT NOT NULL,
    in_reply_to TEXT NOT NULL,
    refs TEXT NOT NULL,           -- space-separated msg-ids of References:
    envelope BLOB NOT NULL,       -- IMAP wire forms
    body BLOB NOT NULL,
    bodystructure BLOB NOT NULL,
    parts BLOB NOT NULL,          -- mime.encode_parts(): part tree with byte offsets
    search_headers BLOB,          -- folded header text, zlib (sqlsearch.index_message_text)
    search_body BLOB,             -- folded body text, zlib
    created INTEGER NOT NULL
);

-- Substring search over header and body text (IMAP SEARCH is substring, case-insensitive):
-- the text is kept folded and compressed in messages.search_*, seen uncompressed through
-- this view, and indexed by trigram without positions (detail=none; see sqlsearch.py).
CREATE VIEW IF NOT EXISTS message_search AS
    SELECT id, inflate_text(search_headers) AS headers, inflate_text(search_body) AS body
    FROM messages;

CREATE VIRTUAL TABLE IF NOT EXISTS message_text USING fts5(
    headers, body, tokenize = 'trigram', detail = 'none',
    content = 'message_search', content_rowid = 'id'
);

CREATE TABLE IF NOT EXISTS entries (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    modseq INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,  -- model.Flag bitmask
    keywords TEXT,                     -- space-separated, NULL when none
    internaldate INTEGER NOT NULL,     -- unix seconds
    tz_offset INTEGER NOT NULL,        -- minutes east of UTC, for INTERNALDATE's zone
    size INTEGER NOT NULL,             -- len(prefix) + messages.size
    prefix BLOB,                       -- per-entry header lines before the shared blob
    pop_retrieved INTEGER,             -- unix seconds of the first POP3 RETR (EXPIRE counts from it)
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS entries_by_modseq ON entries (mailbox_id, modseq);
CREATE INDEX IF NOT EXISTS entries_by_message ON entries (message_id);

-- Expunged UIDs with the MODSEQ of their expunge, for QRESYNC VANISHED (RFC 7162 §3.2.10).
CREATE TABLE IF NOT EXISTS tombstones (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;

-- The outbound queue (DESIGN §5): messages accepted for remote recipients, kept until every
-- recipient is delivered or has failed.  Content is stored like messages.content: inline
-- when small, otherwise in the blob file named by sha256 (which the sweeper must keep).
CREATE TABLE IF NOT EXISTS queue_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    content BLOB,                      -- NULL: in the blob file
    size INTEGER NOT NULL,
    sender TEXT NOT NULL,              -- "" for the null reverse-path
    envid TEXT,                        -- RFC 3461 §4.4, xtext-decoded
    ret TEXT,                          -- RFC 3461 §4.3: FULL, HDRS or NULL
    body TEXT,                         -- RFC 6152 / 3030 BODY=: 7BIT, 8BITMIME, BINARYMIME
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    origin_session TEXT NOT NULL,
    created INTEGER NOT NULL           -- unix seconds
);

CREATE INDEX IF NOT EXISTS queue_messages_by_sha256 ON queue_messages (sha256);

CREATE TABLE IF NOT EXISTS queue_recipients (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL COLLATE NOCASE,  -- workers group deliveries by destination domain
    notify TEXT,                       -- RFC 3461 §4.1, comma-separated; NULL: not given
    orcpt TEXT,                        -- RFC 3461 §4.2 "addr-type;address"
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed', 'held')),
    next_attempt INTEGER NOT NULL,     -- unix seconds
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    log TEXT NOT NULL DEFAULT '[]',    -- JSON array: one line per attempt
    warned INTEGER NOT NULL DEFAULT 0  -- a delay warning went out (RFC 3464 Action: delayed)
);

CREATE INDEX IF NOT EXISTS queue_recipients_due ON queue_recipients (state, next_attempt);
CREATE INDEX IF NOT EXISTS queue_recipients_by_message ON queue_recipients (message_id);

-- Webmail logins (store/websessions.py): the SHA-256 of the cookie token, never the token.
CREATE TABLE IF NOT EXISTS web_sessions (
    token_digest TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    expires INTEGER NOT NULL           -- unix seconds; each use pushes it ahead
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS web_sessions_expiry ON web_sessions (expires);
CREATE INDEX IF NOT EXISTS web_sessions_by_account ON web_sessions (account_id);

-- Filtering (issue 8).  Each table belongs to one module of store/: sieve.py, junk.py,
-- greylist.py, vacation.py.

-- Users' Sieve scripts (RFC 5804): at most one active per account.
CREATE TABLE IF NOT EXISTS sieve_scripts (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    content TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL,          -- unix seconds
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;

CREATE UNIQUE INDEX IF NOT EXISTS sieve_scripts_one_active
    ON sieve_scripts (account_id) WHERE active = 1;

-- Whom a vacation action has answered, and when (RFC 5230 §4.2: once per :days per sender).
CREATE TABLE IF NOT EXISTS vacation_replies (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    handle TEXT NOT NULL,              -- :handle, or a digest of the reason and subject
    sender TEXT NOT NULL,              -- lower-cased
    sent INTEGER NOT NULL,             -- unix seconds
    PRIMARY KEY (account_id, handle, sender)
) WITHOUT ROWID;

-- Greylisting triplets: (client network, sender, recipient).
CREATE TABLE IF NOT EXISTS greylist (
    network TEXT NOT NULL,             -- the client's /24 (IPv4) or /64 (IPv6)
    sender TEXT NOT NULL,              -- lower-cased; '' for the null sender
    recipient TEXT NOT NULL,           -- lower-cased
    sender_domain TEXT NOT NULL,       -- a pass vouches for (network, sender_domain)
    first_seen INTEGER NOT NULL,       -- unix seconds
    passed INTEGER,                    -- unix seconds of the first accepted retry, NULL until then
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (network, sender, recipient)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS greylist_vouching
    ON greylist (network, sender_domain, last_seen) WHERE passed IS NOT NULL;
CREATE INDEX IF NOT EXISTS greylist_by_age ON greylist (last_seen);

-- The Bayesian classifier's counts, per account: how many trained spam and ham messages
-- contained each token, and the totals.
CREATE TABLE IF NOT EXISTS junk_tokens (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    token TEXT NOT NULL,
    spam INTEGER NOT NULL DEFAULT 0,
    ham INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, token)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS junk_totals (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    spam INTEGER NOT NULL DEFAULT 0,
    ham INTEGER NOT NULL DEFAULT 0,
    threshold REAL                     -- the account's own Junk threshold, NULL: [junk] threshold
);

-- Which messages an account has trained, and as what: training the same message again is a
-- no-op, training it the other way moves its tokens from one class to the other.
CREATE TABLE IF NOT EXISTS junk_trained (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    digest BLOB NOT NULL,              -- SHA-256 of the Message-ID, else of the whole message
    spam INTEGER NOT NULL,             -- 1 trained as spam, 0 as ham
    PRIMARY KEY (account_id, digest)
) WITHOUT ROWID;
