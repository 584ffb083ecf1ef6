// Standalone C++ client for the Outpost package __NAME__, generated from its manifest.
// Runtime: OpenVINO's C++ API (it reads the package's ONNX or OpenVINO IR model); images:
// OpenCV's imgcodecs + imgproc. Build with the CMakeLists.txt beside this file.
//
//   ./outpost_predict MODEL_FILE IMAGE [CONF] [IOU]
//
// Prints JSON: {"detections": [{"class_id", "class_name", "confidence", "xyxy"}]} in
// original-image pixels after NMS, or {"classification": [...]} for a classifier.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <openvino/openvino.hpp>

namespace cfg {
// Generated from manifest.json: re-export the model instead of editing.
__CONSTANTS__
}  // namespace cfg

struct Placement {
    cv::Mat image;
    double gain_x, gain_y;
    int pad_x, pad_y;
};

static int round_half_even(double v) { return static_cast<int>(std::nearbyint(v)); }

// Pillow's 8-bit bilinear resampler along one axis (0: rows, 1: columns).
static cv::Mat pil_axis(const cv::Mat& src, int out, int axis) {
    const int bits = 22;
    int size = axis == 0 ? src.rows : src.cols;
    double scale = static_cast<double>(size) / out, fscale = std::max(scale, 1.0);
    double support = fscale;
    int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    std::vector<int> starts(out);
    std::vector<long long> weights(static_cast<size_t>(out) * ksize, 0);
    for (int i = 0; i < out; ++i) {
        double center = (i + 0.5) * scale;
        int lo = std::max(static_cast<int>(center - support + 0.5), 0);
        int n = std::min(static_cast<int>(center + support + 0.5), size) - lo;
        std::vector<double> w(n);
        double total = 0;
        for (int x = 0; x < n; ++x) {
            w[x] = std::max(0.0, 1.0 - std::fabs((x + lo - center + 0.5) / fscale));
            total += w[x];
        }
        for (int x = 0; x < n; ++x) {
            double v = total != 0 ? w[x] / total : w[x];
            weights[static_cast<size_t>(i) * ksize + x] =
                static_cast<long long>(v < 0 ? std::trunc(-0.5 + v * (1 << bits)) : std::trunc(0.5 + v * (1 << bits)));
        }
        starts[i] = lo;
    }
    cv::Mat dst = axis == 0 ? cv::Mat(out, src.cols, CV_8UC3) : cv::Mat(src.rows, out, CV_8UC3);
    for (int r = 0; r < dst.rows; ++r) {
        for (int c = 0; c < dst.cols; ++c) {
            int i = axis == 0 ? r : c;
            for (int ch = 0; ch < 3; ++ch) {
                long long acc = 1LL << (bits - 1);
                for (int k = 0; k < ksize; ++k) {
                    int j = std::min(starts[i] + k, size - 1);
                    const cv::Vec3b& px = axis == 0 ? src.at<cv::Vec3b>(j, c) : src.at<cv::Vec3b>(r, j);
                    acc += px[ch] * weights[static_cast<size_t>(i) * ksize + k];
                }
                dst.at<cv::Vec3b>(r, c)[ch] = static_cast<uchar>(std::clamp(acc >> bits, 0LL, 255LL));
            }
        }
    }
    return dst;
}

static cv::Mat resize_pil(const cv::Mat& img, int w, int h) {
    if (static_cast<double>(h) / img.rows < static_cast<double>(w) / img.cols) {
        cv::Mat a = img.rows != h ? pil_axis(img, h, 0) : img;
        return a.cols != w ? pil_axis(a, w, 1) : a;
    }
    cv::Mat a = img.cols != w ? pil_axis(img, w, 1) : img;
    return a.rows != h ? pil_axis(a, h, 0) : a;
}

static Placement letterbox(const cv::Mat& img) {
    int h0 = img.rows, w0 = img.cols;
    double r = std::min(static_cast<double>(cfg::kInputH) / h0, static_cast<double>(cfg::kInputW) / w0);
    int uw = std::max(round_half_even(w0 * r), 1), uh = std::max(round_half_even(h0 * r), 1);
    double dw = (cfg::kInputW - uw) / 2.0, dh = (cfg::kInputH - uh) / 2.0;
    cv::Mat resized = img;
    if (uw != w0 || uh != h0) {
        if (cfg::kPilBilinear) resized = resize_pil(img, uw, uh);
        else cv::resize(img, resized, cv::Size(uw, uh), 0, 0, cv::INTER_LINEAR);
    }
    int top = round_half_even(dh - 0.1), bottom = round_half_even(dh + 0.1);
    int left = round_half_even(dw - 0.1), right = round_half_even(dw + 0.1);
    cv::Mat out;
    cv::copyMakeBorder(resized, out, top, bottom, left, right, cv::BORDER_CONSTANT,
                       cv::Scalar(cfg::kPad, cfg::kPad, cfg::kPad));
    return {out, static_cast<double>(uw) / w0, static_cast<double>(uh) / h0, left, top};
}

static Placement center_crop(const cv::Mat& img) {
    int h0 = img.rows, w0 = img.cols, size = std::min(cfg::kInputH, cfg::kInputW);
    int nh = size, nw = size;
    if (h0 <= w0) nw = std::max(static_cast<int>(static_cast<double>(size) * w0 / h0), 1);
    else nh = std::max(static_cast<int>(static_cast<double>(size) * h0 / w0), 1);
    cv::Mat resized = img;
    if (nh != h0 || nw != w0) {
        bool shrink = nh < h0 || nw < w0;
        cv::resize(img, resized, cv::Size(nw, nh), 0, 0, shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
    }
    int top = std::max(round_half_even((nh - cfg::kInputH) / 2.0), 0);
    int left = std::max(round_half_even((nw - cfg::kInputW) / 2.0), 0);
    cv::Mat crop(cfg::kInputH, cfg::kInputW, CV_8UC3, cv::Scalar(0, 0, 0));
    cv::Rect roi(left, top, std::min(cfg::kInputW, nw - left), std::min(cfg::kInputH, nh - top));
    resized(roi).copyTo(crop(cv::Rect(0, 0, roi.width, roi.height)));
    return {crop, static_cast<double>(nw) / w0, static_cast<double>(nh) / h0, -left, -top};
}

static void to_tensor(const cv::Mat& img, float* dst) {
    const int h = img.rows, w = img.cols;
    double divisor = 1.0 / cfg::kScale;
    bool divide = std::fabs(divisor - std::round(divisor)) < 1e-6;
    for (int c = 0; c < 3; ++c) {
        int src_c = cfg::kRgb ? 2 - c : c;
        for (int y = 0; y < h; ++y) {
            const cv::Vec3b* row = img.ptr<cv::Vec3b>(y);
            for (int x = 0; x < w; ++x) {
                float v = static_cast<float>(row[x][src_c]);
                v = divide ? v / static_cast<float>(std::round(divisor)) : v * static_cast<float>(cfg::kScale);
                if (cfg::kNormalize) v = (v - cfg::kMean[c]) / cfg::kStd[c];
                dst[(static_cast<size_t>(c) * h + y) * w + x] = v;
            }
        }
    }
}

struct Box { float x1, y1, x2, y2, score; int cls; };

static std::vector<Box> decode(const float* out, const ov::Shape& shape, float conf, float iou) {
    std::vector<Box> cand;
    const int nc = static_cast<int>(cfg::kClassNames.size());
    if (cfg::kEnd2End) {  // (1, max_det, 6 + extra): x1 y1 x2 y2 score class
        size_t rows = shape[1], cols = shape[2];
        for (size_t i = 0; i < rows && cand.size() < static_cast<size_t>(cfg::kMaxDet); ++i) {
            const float* r = out + i * cols;
            if (r[4] > conf) cand.push_back({r[0], r[1], r[2], r[3], r[4], static_cast<int>(r[5])});
        }
        return cand;
    }
    size_t anchors = shape[2];  // (1, 4 + nc + extra, anchors): cx cy w h class scores
    for (size_t a = 0; a < anchors; ++a) {
        int best = 0;
        float score = out[4 * anchors + a];
        for (int c = 1; c < nc; ++c) {
            float s = out[(4 + c) * anchors + a];
            if (s > score) { score = s; best = c; }
        }
        if (!(score > conf)) continue;
        float cx = out[a], cy = out[anchors + a], hw = out[2 * anchors + a] / 2, hh = out[3 * anchors + a] / 2;
        cand.push_back({cx - hw, cy - hh, cx + hw, cy + hh, score, best});
    }
    if (cfg::kNormalizedBoxes) {
        for (auto& b : cand) { b.x1 *= cfg::kInputW; b.x2 *= cfg::kInputW; b.y1 *= cfg::kInputH; b.y2 *= cfg::kInputH; }
    }
    std::vector<size_t> order(cand.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return cand[i].score > cand[j].score; });
    if (order.size() > 30000) order.resize(30000);
    std::vector<Box> kept;
    std::vector<bool> gone(cand.size(), false);
    for (size_t oi = 0; oi < order.size() && kept.size() < static_cast<size_t>(cfg::kMaxDet); ++oi) {
        size_t i = order[oi];
        if (gone[i]) continue;
        kept.push_back(cand[i]);
        float off_i = cfg::kAgnostic ? 0.f : cand[i].cls * 7680.f;
        float ax1 = cand[i].x1 + off_i, ay1 = cand[i].y1 + off_i, ax2 = cand[i].x2 + off_i, ay2 = cand[i].y2 + off_i;
        float area_a = (ax2 - ax1) * (ay2 - ay1);
        for (size_t oj = oi + 1; oj < order.size(); ++oj) {
            size_t j = order[oj];
            if (gone[j]) continue;
            float off_j = cfg::kAgnostic ? 0.f : cand[j].cls * 7680.f;
            float bx1 = cand[j].x1 + off_j, by1 = cand[j].y1 + off_j, bx2 = cand[j].x2 + off_j, by2 = cand[j].y2 + off_j;
            float w = std::max(0.f, std::min(ax2, bx2) - std::max(ax1, bx1));
            float h = std::max(0.f, std::min(ay2, by2) - std::max(ay1, by1));
            float inter = w * h;
            if (inter / (area_a + (bx2 - bx1) * (by2 - by1) - inter) > iou) gone[j] = true;
        }
    }
    return kept;
}

static std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char ch : s) {
        if (ch == '"' || ch == '\\') out += '\\';
        out += ch;
    }
    return out + "\"";
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " MODEL_FILE IMAGE [CONF] [IOU]\n";
        return 2;
    }
    float conf = argc > 3 ? std::stof(argv[3]) : cfg::kConf;
    float iou = argc > 4 ? std::stof(argv[4]) : cfg::kIou;
    cv::Mat img = cv::imread(argv[2], cv::IMREAD_COLOR);
    if (img.empty()) {
        std::cerr << "cannot read image " << argv[2] << "\n";
        return 1;
    }
    ov::Core core;
    ov::AnyMap config;
    if (cfg::kFp32) config[ov::hint::inference_precision.name()] = ov::element::f32;
    ov::CompiledModel model = core.compile_model(argv[1], "CPU", config);
    ov::InferRequest request = model.create_infer_request();
    Placement placed = cfg::kCenterCrop ? center_crop(img) : letterbox(img);
    ov::Tensor input = request.get_input_tensor();
    to_tensor(placed.image, input.data<float>());
    request.infer();
    ov::Tensor output = request.get_output_tensor(0);
    const float* out = output.data<float>();
    std::printf("{");
    if (cfg::kClassify) {
        size_t n = output.get_size();
        std::vector<double> probs(out, out + n);
        double sum = std::accumulate(probs.begin(), probs.end(), 0.0);
        bool negative = std::any_of(probs.begin(), probs.end(), [](double p) { return p < 0; });
        if (negative || std::fabs(sum - 1.0) > 1e-3) {
            double mx = *std::max_element(probs.begin(), probs.end()), total = 0;
            for (auto& p : probs) { p = std::exp(p - mx); total += p; }
            for (auto& p : probs) p /= total;
        }
        std::vector<size_t> order(n);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return probs[i] > probs[j]; });
        std::printf("\"classification\": [");
        for (size_t k = 0; k < std::min(n, static_cast<size_t>(cfg::kTopK)); ++k) {
            size_t i = order[k];
            std::printf("%s{\"class_id\": %zu, \"class_name\": %s, \"confidence\": %.6f}", k ? ", " : "", i,
                        json_string(cfg::kClassNames[i]).c_str(), probs[i]);
        }
        std::printf("]}\n");
        return 0;
    }
    std::vector<Box> boxes = decode(out, output.get_shape(), conf, iou);
    std::printf("\"detections\": [");
    for (size_t k = 0; k < boxes.size(); ++k) {
        const Box& b = boxes[k];
        double v[4] = {(b.x1 - placed.pad_x) / placed.gain_x, (b.y1 - placed.pad_y) / placed.gain_y,
                       (b.x2 - placed.pad_x) / placed.gain_x, (b.y2 - placed.pad_y) / placed.gain_y};
        v[0] = std::clamp(v[0], 0.0, static_cast<double>(img.cols));
        v[2] = std::clamp(v[2], 0.0, static_cast<double>(img.cols));
        v[1] = std::clamp(v[1], 0.0, static_cast<double>(img.rows));
        v[3] = std::clamp(v[3], 0.0, static_cast<double>(img.rows));
        std::string name = b.cls < static_cast<int>(cfg::kClassNames.size()) ? cfg::kClassNames[b.cls] : std::to_string(b.cls);
        std::printf("%s{\"class_id\": %d, \"class_name\": %s, \"confidence\": %.6f, \"xyxy\": [%.4f, %.4f, %.4f, %.4f]}",
                    k ? ", " : "", b.cls, json_string(name).c_str(), b.score, v[0], v[1], v[2], v[3]);
    }
    std::printf("]}\n");
    return 0;
}
