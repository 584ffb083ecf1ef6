// Swift client (CoreML + Vision) for the Outpost package __NAME__, generated from its manifest.
// It cannot be compiled here (no Apple toolchain on Linux): add it to an Xcode target with
// the model exported as CoreML (`outpost export RUN --format coreml`), compiled by Xcode.
import CoreML
import Foundation
import Vision

public struct OutpostDetection {
    public let classId: Int
    public let className: String
    public let confidence: Float
    public let rect: CGRect  // original-image pixels
}

public final class OutpostModel {
    // Generated from manifest.json: re-export the model instead of editing.
    public static let classNames: [String] = __CLASS_NAMES__
    public static let inputWidth = __INPUT_W__
    public static let inputHeight = __INPUT_H__
    public static let confThreshold: Float = __CONF__
    public static let iouThreshold: Float = __IOU__
    public static let maxDetections = __MAX_DET__
    public static let task = "__TASK__"

    private let request: VNCoreMLRequest

    public init(compiledModelURL: URL) throws {
        let model = try VNCoreMLModel(for: MLModel(contentsOf: compiledModelURL))
        request = VNCoreMLRequest(model: model)
        request.imageCropAndScaleOption = .scaleFit  // letterbox: aspect kept, centred
    }

    public func detect(_ image: CGImage) throws -> [OutpostDetection] {
        try VNImageRequestHandler(cgImage: image).perform([request])
        guard let obs = request.results?.first as? VNCoreMLFeatureValueObservation,
              let out = obs.featureValue.multiArrayValue else { return [] }
        // (1, 4 + classes, anchors): cx, cy, w, h in input pixels, then class scores.
        let nc = Self.classNames.count
        let anchors = out.shape[2].intValue
        let gain = min(Float(Self.inputWidth) / Float(image.width), Float(Self.inputHeight) / Float(image.height))
        let padX = (Float(Self.inputWidth) - Float(image.width) * gain) / 2
        let padY = (Float(Self.inputHeight) - Float(image.height) * gain) / 2
        var found: [OutpostDetection] = []
        for a in 0..<anchors {
            var best = 0
            var score = out[[0, 4, a] as [NSNumber]].floatValue
            for c in 1..<max(nc, 1) where out[[0, 4 + c, a] as [NSNumber]].floatValue > score {
                score = out[[0, 4 + c, a] as [NSNumber]].floatValue
                best = c
            }
            guard score > Self.confThreshold else { continue }
            let cx = out[[0, 0, a] as [NSNumber]].floatValue, cy = out[[0, 1, a] as [NSNumber]].floatValue
            let w = out[[0, 2, a] as [NSNumber]].floatValue, h = out[[0, 3, a] as [NSNumber]].floatValue
            let rect = CGRect(x: CGFloat((cx - w / 2 - padX) / gain), y: CGFloat((cy - h / 2 - padY) / gain),
                              width: CGFloat(w / gain), height: CGFloat(h / gain))
            found.append(OutpostDetection(classId: best, className: Self.classNames[best], confidence: score, rect: rect))
        }
        return Self.nms(found.sorted { $0.confidence > $1.confidence })
    }

    static func nms(_ sorted: [OutpostDetection]) -> [OutpostDetection] {
        var kept: [OutpostDetection] = []
        for d in sorted where kept.count < maxDetections {
            let overlaps = kept.contains { k in
                guard k.classId == d.classId else { return false }
                let inter = k.rect.intersection(d.rect)
                guard !inter.isNull else { return false }
                let i = Float(inter.width * inter.height)
                let u = Float(k.rect.width * k.rect.height + d.rect.width * d.rect.height) - i
                return u > 0 && i / u > iouThreshold
            }
            if !overlaps { kept.append(d) }
        }
        return kept
    }
}
