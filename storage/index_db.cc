// RocksDB is used for what it is good at: small ordered values, atomic batches and a WAL. The
// bulk bytes never enter it (WiscKey-style split), so it is tuned small: no compression (keys are
// hashes), modest memtables, a small block cache, two background jobs.
#include "storage/index_db.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

namespace kvstash::storage {
namespace {

Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return Status::Ok();
  std::string m(context);
  m += ": ";
  m += s.ToString();
  if (s.IsNotFound()) return Status::NotFound(std::move(m));
  if (s.IsCorruption()) return Status::Corruption(std::move(m));
  if (s.IsNoSpace()) return Status::ResourceExhausted(std::move(m));
  if (s.IsIOError()) return Status::IOError(std::move(m));
  if (s.IsBusy() || s.IsTryAgain()) return Status::Busy(std::move(m));
  if (s.IsInvalidArgument()) return Status::InvalidArgument(std::move(m));
  return Status::Internal(std::move(m));
}

rocksdb::Slice AsSlice(std::string_view v) { return {v.data(), v.size()}; }

}  // namespace

struct IndexDb::Rep {
  std::string dir;
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::ColumnFamilyOptions blocks_options;
  rocksdb::ColumnFamilyHandle* blocks = nullptr;
  rocksdb::ColumnFamilyHandle* sessions = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  rocksdb::ColumnFamilyHandle* default_cf = nullptr;

  ~Rep() {
    if (db) {
      for (auto* h : {blocks, sessions, meta, default_cf}) {
        if (h != nullptr) db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
      }
      db->Close().PermitUncheckedError();
    }
  }
};

struct IndexBatch::Rep {
  rocksdb::WriteBatch batch;
};

IndexBatch::IndexBatch(const IndexDb& db) : db_(db), rep_(std::make_unique<Rep>()) {}
IndexBatch::~IndexBatch() = default;

void IndexBatch::PutBlock(const BlockKey& key, const format::IndexEntry& entry) {
  rep_->batch.Put(db_.rep_->blocks, format::EncodeIndexKey(key), format::EncodeIndexValue(entry))
      .PermitUncheckedError();
}

void IndexBatch::DeleteBlock(const BlockKey& key) {
  rep_->batch.Delete(db_.rep_->blocks, format::EncodeIndexKey(key)).PermitUncheckedError();
}

void IndexBatch::DeleteRawBlock(std::string_view raw_key) {
  rep_->batch.Delete(db_.rep_->blocks, AsSlice(raw_key)).PermitUncheckedError();
}

void IndexBatch::PutSegment(uint64_t segment_id, const format::SegmentRecord& record) {
  rep_->batch
      .Put(db_.rep_->meta, format::SegmentRecordKey(segment_id),
           format::EncodeSegmentRecord(record))
      .PermitUncheckedError();
}

void IndexBatch::DeleteSegment(uint64_t segment_id) {
  rep_->batch.Delete(db_.rep_->meta, format::SegmentRecordKey(segment_id)).PermitUncheckedError();
}

size_t IndexBatch::count() const { return static_cast<size_t>(rep_->batch.Count()); }

IndexDb::IndexDb() : rep_(std::make_unique<Rep>()) {}
IndexDb::~IndexDb() = default;

Result<std::unique_ptr<IndexDb>> IndexDb::Open(const std::string& dir, const Options& options) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 2;
  db_options.max_log_file_size = 1 << 20;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.max_total_wal_size = 64ull << 20;

  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.cache_bytes);
  table.block_size = 16 * 1024;

  rocksdb::ColumnFamilyOptions blocks;
  blocks.compression = rocksdb::kNoCompression;
  blocks.write_buffer_size = 8ull << 20;
  blocks.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::ColumnFamilyOptions small;
  small.compression = rocksdb::kNoCompression;
  small.write_buffer_size = 2ull << 20;
  small.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, small},
      {std::string(format::kBlocksColumnFamily), blocks},
      {std::string(format::kSessionsColumnFamily), small},
      {std::string(format::kMetaColumnFamily), small},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir, cfs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, "open index " + dir);

  std::unique_ptr<IndexDb> idx(new IndexDb());
  idx->rep_->dir = dir;
  idx->rep_->db.reset(raw);
  idx->rep_->blocks_options = blocks;
  idx->rep_->default_cf = handles[0];
  idx->rep_->blocks = handles[1];
  idx->rep_->sessions = handles[2];
  idx->rep_->meta = handles[3];
  return idx;
}

Status IndexDb::ForEachBlock(
    const std::function<void(std::string_view, std::string_view)>& fn) const {
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(ro, rep_->blocks));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    fn({it->key().data(), it->key().size()}, {it->value().data(), it->value().size()});
  }
  return FromRocks(it->status(), "scan index " + rep_->dir);
}

Status IndexDb::ForEachSegmentRecord(
    const std::function<void(uint64_t, std::string_view)>& fn) const {
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  std::unique_ptr<rocksdb::Iterator> it(rep_->db->NewIterator(ro, rep_->meta));
  const std::string prefix(format::kMetaSegmentPrefix);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto id = format::ParseSegmentRecordKey({it->key().data(), it->key().size()});
    if (id) fn(*id, {it->value().data(), it->value().size()});
  }
  return FromRocks(it->status(), "scan segment records " + rep_->dir);
}

Status IndexDb::Write(IndexBatch& batch, bool sync) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(rep_->db->Write(wo, &batch.rep_->batch), "write index " + rep_->dir);
}

Status IndexDb::SyncWal() { return FromRocks(rep_->db->SyncWAL(), "sync index WAL " + rep_->dir); }

Status IndexDb::FlushMemtables() {
  rocksdb::FlushOptions fo;
  fo.wait = true;
  return FromRocks(rep_->db->Flush(fo, {rep_->blocks, rep_->sessions, rep_->meta}),
                   "flush index " + rep_->dir);
}

Status IndexDb::ResetBlocks() {
  rocksdb::Status s = rep_->db->DropColumnFamily(rep_->blocks);
  if (!s.ok()) return FromRocks(s, "drop blocks column family");
  rep_->db->DestroyColumnFamilyHandle(rep_->blocks).PermitUncheckedError();
  rep_->blocks = nullptr;
  s = rep_->db->CreateColumnFamily(rep_->blocks_options, std::string(format::kBlocksColumnFamily),
                                   &rep_->blocks);
  if (!s.ok()) return FromRocks(s, "create blocks column family");
  // Segment records describe segments whose entries are being rebuilt; drop them too.
  std::vector<uint64_t> ids;
  KV_RETURN_IF_ERROR(
      ForEachSegmentRecord([&](uint64_t id, std::string_view) { ids.push_back(id); }));
  IndexBatch batch(*this);
  for (uint64_t id : ids) batch.DeleteSegment(id);
  return Write(batch, /*sync=*/true);
}

Status IndexDb::Resume() { return FromRocks(rep_->db->Resume(), "resume index " + rep_->dir); }

Result<std::string> IndexDb::GetMeta(std::string_view key) const {
  std::string value;
  rocksdb::Status s = rep_->db->Get(rocksdb::ReadOptions(), rep_->meta, AsSlice(key), &value);
  if (!s.ok()) return FromRocks(s, "get meta " + std::string(key));
  return value;
}

Status IndexDb::PutMeta(std::string_view key, std::string_view value) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(rep_->db->Put(wo, rep_->meta, AsSlice(key), AsSlice(value)),
                   "put meta " + std::string(key));
}

Status IndexDb::DeleteMeta(std::string_view key) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(rep_->db->Delete(wo, rep_->meta, AsSlice(key)),
                   "delete meta " + std::string(key));
}

Result<std::string> IndexDb::GetSession(std::string_view name) const {
  std::string value;
  rocksdb::Status s = rep_->db->Get(rocksdb::ReadOptions(), rep_->sessions, AsSlice(name), &value);
  if (!s.ok()) return FromRocks(s, "get session " + std::string(name));
  return value;
}

Status IndexDb::PutSession(std::string_view name, std::string_view manifest) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(rep_->db->Put(wo, rep_->sessions, AsSlice(name), AsSlice(manifest)),
                   "put session " + std::string(name));
}

Status IndexDb::DeleteSession(std::string_view name) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(rep_->db->Delete(wo, rep_->sessions, AsSlice(name)),
                   "delete session " + std::string(name));
}

Result<std::vector<std::string>> IndexDb::ListSessions() const {
  std::vector<std::string> names;
  std::unique_ptr<rocksdb::Iterator> it(
      rep_->db->NewIterator(rocksdb::ReadOptions(), rep_->sessions));
  for (it->SeekToFirst(); it->Valid(); it->Next()) names.push_back(it->key().ToString());
  KV_RETURN_IF_ERROR(FromRocks(it->status(), "list sessions"));
  return names;
}

uint64_t IndexDb::ApproximateBytes() const {
  uint64_t total = 0;
  for (auto* cf : {rep_->blocks, rep_->sessions, rep_->meta}) {
    uint64_t v = 0;
    if (rep_->db->GetIntProperty(cf, "rocksdb.total-sst-files-size", &v)) total += v;
    if (rep_->db->GetIntProperty(cf, "rocksdb.cur-size-all-mem-tables", &v)) total += v;
  }
  return total;
}

}  // namespace kvstash::storage
