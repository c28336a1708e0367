#include "storage/uring/io_uring_queue.h"

#include <liburing.h>

#include <cerrno>
#include <cstring>
#include <deque>

namespace kvstash::storage {
namespace {

class IoUringQueue final : public IoQueue {
 public:
  explicit IoUringQueue(unsigned depth) : depth_(depth) {}
  ~IoUringQueue() override {
    if (!initialized_) return;
    // Callers reap everything before dropping a queue; if one did not, wait here so the kernel
    // never writes into buffers that are about to be freed.
    std::vector<IoCompletion> sink;
    while (in_ring_ > 0 && Reap(in_ring_, &sink).ok()) {
    }
    io_uring_queue_exit(&ring_);
  }

  Status Init() {
    // COOP_TASKRUN avoids interrupting the submitter for completions; SUBMIT_ALL keeps going past
    // a bad entry. Both are optional: retry without them on older kernels.
    const unsigned wanted[] = {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL, 0u};
    int rc = -EINVAL;
    for (unsigned flags : wanted) {
      io_uring_params params;
      std::memset(&params, 0, sizeof(params));
      params.flags = flags;
      rc = io_uring_queue_init_params(depth_, &ring_, &params);
      if (rc == 0) {
        initialized_ = true;
        return Status::Ok();
      }
      if (rc != -EINVAL) break;
    }
    return Status::FromErrno("io_uring_queue_init", -rc);
  }

  unsigned depth() const override { return depth_; }
  unsigned in_flight() const override { return in_ring_ + static_cast<unsigned>(ready_.size()); }
  std::string_view name() const override { return "io_uring"; }

  Status Submit(std::span<const IoOp> ops) override {
    if (in_flight() + ops.size() > depth_) return Status::Internal("IoQueue depth exceeded");
    unsigned prepared = 0;
    for (const IoOp& op : ops) {
      const int fd = op.file->fd();
      if (fd < 0) {
        ready_.push_back({op.tag, RunIoOpSynchronously(op)});
        continue;
      }
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) {
        // The SQ ring holds at least depth_ entries, so this only happens if a previous submit
        // left entries behind; flush them and retry once.
        KV_RETURN_IF_ERROR(SubmitPrepared(prepared));
        prepared = 0;
        sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) return Status::Internal("io_uring submission queue full");
      }
      switch (op.kind) {
        case IoOp::Kind::kRead:
          if (op.iov_count == 1) {
            io_uring_prep_read(sqe, fd, op.iov[0].iov_base,
                               static_cast<unsigned>(op.iov[0].iov_len), op.offset);
          } else {
            io_uring_prep_readv(sqe, fd, op.iov, op.iov_count, op.offset);
          }
          break;
        case IoOp::Kind::kWrite:
          if (op.iov_count == 1) {
            io_uring_prep_write(sqe, fd, op.iov[0].iov_base,
                                static_cast<unsigned>(op.iov[0].iov_len), op.offset);
          } else {
            io_uring_prep_writev(sqe, fd, op.iov, op.iov_count, op.offset);
          }
          break;
        case IoOp::Kind::kSync:
          io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
          break;
      }
      io_uring_sqe_set_data64(sqe, op.tag);
      ++prepared;
      ++in_ring_;
    }
    return SubmitPrepared(prepared);
  }

  Status Reap(unsigned min_completions, std::vector<IoCompletion>* out) override {
    unsigned got = static_cast<unsigned>(ready_.size());
    out->insert(out->end(), ready_.begin(), ready_.end());
    ready_.clear();
    unsigned need = min_completions > got ? min_completions - got : 0;
    if (need > in_ring_) need = in_ring_;
    if (need > 0) {
      io_uring_cqe* cqe = nullptr;
      int rc;
      do {
        rc = io_uring_wait_cqe_nr(&ring_, &cqe, need);
      } while (rc == -EINTR || rc == -EAGAIN);
      if (rc < 0) return Status::FromErrno("io_uring_wait_cqe", -rc);
    }
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      out->push_back({io_uring_cqe_get_data64(cqe), cqe->res});
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    in_ring_ -= seen;
    return Status::Ok();
  }

 private:
  Status SubmitPrepared(unsigned prepared) {
    while (prepared > 0) {
      int rc = io_uring_submit(&ring_);
      if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) continue;
      if (rc < 0) return Status::FromErrno("io_uring_submit", -rc);
      if (rc == 0) return Status::Internal("io_uring_submit made no progress");
      prepared -= static_cast<unsigned>(rc) > prepared ? prepared : static_cast<unsigned>(rc);
    }
    return Status::Ok();
  }

  io_uring ring_{};
  bool initialized_ = false;
  unsigned depth_;
  unsigned in_ring_ = 0;
  std::deque<IoCompletion> ready_;
};

}  // namespace

Result<std::unique_ptr<IoQueue>> NewIoUringQueue(unsigned depth) {
  auto q = std::make_unique<IoUringQueue>(depth);
  KV_RETURN_IF_ERROR(q->Init());
  return std::unique_ptr<IoQueue>(std::move(q));
}

}  // namespace kvstash::storage
